// Helpers of omi-letta's page that hold no state: building elements, reading event streams, and
// formatting segments and times. Loaded before app.js, which takes them from `window.OmiLettaPage`.
"use strict";

window.OmiLettaPage = (() => {
  /** An element with attributes and children; strings become text nodes. */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "className") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  async function detailOf(response) {
    try {
      const body = await response.json();
      if (body && typeof body.detail === "string" && body.detail) return body.detail;
    } catch (_) {
      // not JSON
    }
    return `${response.status} ${response.statusText}`.trim();
  }

  /** Read a text/event-stream response, calling onEvent(name, data) per event; resolves at its end. */
  async function readEvents(response, onEvent) {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let pending = "";
    let name = "";
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      const text = pending + value;
      const hold = text.endsWith("\r") ? "\r" : ""; // "\r\n" may be split between chunks
      const lines = (hold ? text.slice(0, -1) : text).replace(/\r\n?/g, "\n").split("\n");
      pending = lines.pop() + hold;
      for (const line of lines) {
        if (line === "") {
          if (data.length) {
            let parsed = null;
            try {
              parsed = JSON.parse(data.join("\n"));
            } catch (_) {
              parsed = data.join("\n");
            }
            onEvent(name || "message", parsed);
          }
          name = "";
          data = [];
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let content = colon < 0 ? "" : line.slice(colon + 1);
          if (content.startsWith(" ")) content = content.slice(1);
          if (field === "event") name = content;
          else if (field === "data") data.push(content);
        }
      }
    }
  }

  const sameSegment = (a, b) =>
    ["text", "speaker_id", "speaker_name", "is_user", "person_id", "start", "end"].every((key) => a[key] === b[key]);

  const speakerName = (seg) => seg.speaker_name || (seg.is_user ? "me" : `Speaker ${seg.speaker_id}`);

  function offset(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  }

  function clock(date) {
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function when(iso) {
    const date = new Date(iso);
    return Number.isNaN(date.getTime())
      ? iso
      : date.toLocaleString([], { weekday: "short", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  }

  function minutes(conversation) {
    const seconds = (Date.parse(conversation.finished_at) - Date.parse(conversation.started_at)) / 1000;
    if (!Number.isFinite(seconds) || seconds < 60) return "under a minute";
    return `${Math.round(seconds / 60)} min`;
  }

  function speakersOf(conversation) {
    const names = new Map();
    for (const seg of conversation.transcript_segments) names.set(seg.speaker_id, speakerName(seg));
    return names;
  }

  /** A transcript line: who, when, what. `time` is the text of the time column. */
  function segmentItem(seg, time) {
    const li = el("li", { "data-id": seg.id, "data-speaker": seg.speaker_id });
    li.append(
      el(
        "div",
        { className: "segment-head" },
        el("span", { className: seg.is_user ? "speaker me" : "speaker", text: speakerName(seg) }),
        el("time", { text: time }),
      ),
      el("div", { className: "text", text: seg.text }),
    );
    return li;
  }

  const helpers = { ApiError, clock, detailOf, el, minutes, offset, readEvents, sameSegment };
  return Object.freeze({ ...helpers, segmentItem, sleep, speakerName, speakersOf, when });
})();
