// omi-letta's page: plain JavaScript, no build step. Every API call carries the bearer token;
// data from the server only ever reaches the page as text (textContent), never as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "omi-letta.token";
  const PAGE_SIZE = 20;
  const $ = (id) => document.getElementById(id);

  let token = localStorage.getItem(TOKEN_KEY);
  let live = null; // AbortController of the /v1/live stream
  const liveSegments = new Map(); // id -> segment of the conversation in progress
  let liveConversationId = null;
  let liveLookup = null; // timer: find the id of a conversation that started while we watched
  let detail = null; // the conversation shown in detail
  let listOffset = 0;
  let listLoaded = false;
  let chatBusy = false;

  // ---- helpers -------------------------------------------------------------------------------

  const { ApiError, clock, detailOf, el, minutes, offset, readEvents } = window.OmiLettaPage;
  const { sameSegment, segmentItem, sleep, speakerName, speakersOf, when } = window.OmiLettaPage;

  function authHeaders(extra = {}) {
    return { Authorization: `Bearer ${token}`, ...extra };
  }

  /** Call the API as the signed-in user; JSON in and out. A 401 signs out. */
  async function api(path, { method = "GET", body } = {}) {
    const headers = authHeaders(body === undefined ? {} : { "Content-Type": "application/json" });
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
    if (response.status === 401) {
      signOut("Your token is no longer accepted. Sign in again.");
      throw new ApiError(401, "signed out");
    }
    if (!response.ok) throw new ApiError(response.status, await detailOf(response));
    return response.status === 204 ? null : response.json();
  }

  // ---- sign in and out -----------------------------------------------------------------------

  async function signIn(event) {
    event.preventDefault();
    const input = $("token");
    const candidate = input.value.trim();
    const error = $("sign-in-error");
    error.textContent = "";
    if (!candidate) {
      error.textContent = "Enter your API token.";
      input.focus();
      return;
    }
    let response;
    try {
      response = await fetch("/v1/conversations/page?limit=1", {
        headers: { Authorization: `Bearer ${candidate}` },
        cache: "no-store",
      });
    } catch (_) {
      error.textContent = "The service cannot be reached.";
      return;
    }
    if (!response.ok) {
      error.textContent = response.status === 401 ? "That token was not accepted." : await detailOf(response);
      input.focus();
      return;
    }
    token = candidate;
    localStorage.setItem(TOKEN_KEY, token);
    input.value = "";
    start();
  }

  function signOut(message = "") {
    localStorage.removeItem(TOKEN_KEY);
    token = null;
    if (live) live.abort();
    live = null;
    clearTimeout(liveLookup);
    liveSegments.clear();
    liveConversationId = null;
    detail = null;
    listLoaded = false;
    for (const id of ["live-transcript", "conversation-list", "detail-segments", "detail-speakers", "search-results", "chat-log"]) {
      $(id).replaceChildren();
    }
    $("live-note").replaceChildren();
    $("search-status").textContent = "";
    $("app").hidden = true;
    $("sign-out").hidden = true;
    $("sign-in").hidden = false;
    $("sign-in-error").textContent = message;
    history.replaceState(null, "", location.pathname);
    $("token").focus();
  }

  function start() {
    $("sign-in").hidden = true;
    $("app").hidden = false;
    $("sign-out").hidden = false;
    route();
    connectLive();
  }

  // ---- tabs and routes (#live, #conversations, #conversation/<id>, #search, #chat) --------------

  const TABS = ["live", "conversations", "search", "chat"];

  function showTab(name) {
    for (const tab of TABS) {
      const selected = tab === name;
      $(tab).classList.toggle("active", selected);
      const button = $(`tab-${tab}`);
      button.setAttribute("aria-selected", String(selected));
      button.tabIndex = selected ? 0 : -1;
    }
  }

  function route() {
    if (!token) return;
    if (!listLoaded) loadConversations(true); // a wide screen shows the list beside everything else
    const hash = decodeURIComponent(location.hash.slice(1));
    if (hash.startsWith("conversation/")) {
      showTab("conversations");
      openConversation(hash.slice("conversation/".length), true);
      return;
    }
    const tab = TABS.includes(hash) ? hash : "live";
    showTab(tab);
    if (tab === "conversations") {
      $("conversation-detail").hidden = true;
      $("conversation-list-view").hidden = false;
      detail = null;
    }
  }

  function onTabKey(event) {
    const index = TABS.indexOf(event.target.dataset.tab);
    let next = null;
    if (event.key === "ArrowRight") next = TABS[(index + 1) % TABS.length];
    else if (event.key === "ArrowLeft") next = TABS[(index + TABS.length - 1) % TABS.length];
    else if (event.key === "Home") next = TABS[0];
    else if (event.key === "End") next = TABS[TABS.length - 1];
    if (next) {
      event.preventDefault();
      location.hash = next;
      $(`tab-${next}`).focus();
    }
  }

  // ---- live transcript ------------------------------------------------------------------------

  function setLiveStatus(text, on) {
    const status = $("live-status");
    status.textContent = text;
    status.classList.toggle("on", on);
  }

  async function connectLive() {
    const controller = new AbortController();
    live = controller;
    let delay = 1000;
    while (!controller.signal.aborted) {
      setLiveStatus("Connecting…", false);
      try {
        const response = await fetch("/v1/live", {
          headers: authHeaders({ Accept: "text/event-stream" }),
          signal: controller.signal,
          cache: "no-store",
        });
        if (response.status === 401) {
          signOut("Your token is no longer accepted. Sign in again.");
          return;
        }
        if (response.ok) {
          await readEvents(response, (name, data) => {
            if (name === "ready") delay = 1000;
            onLiveEvent(name, data);
          });
        }
      } catch (_) {
        // dropped or aborted; retry below unless signed out
      }
      if (controller.signal.aborted) return;
      setLiveStatus("Reconnecting…", false);
      await sleep(delay);
      delay = Math.min(delay * 2, 15000);
    }
  }

  function onLiveEvent(name, data) {
    if (name === "ready") {
      setLiveStatus("Listening", true);
      loadLiveConversation();
    } else if (name === "segments" && Array.isArray(data)) {
      for (const seg of data) putLiveSegment(seg);
      if (!liveConversationId) findLiveConversationSoon();
    } else if (name === "relabel" && Array.isArray(data)) {
      for (const seg of data) {
        if (liveSegments.has(seg.id)) putLiveSegment(seg);
      }
      const shown = detail ? new Map(detail.transcript_segments.map((s) => [s.id, s])) : new Map();
      if (data.some((seg) => shown.has(seg.id) && !sameSegment(shown.get(seg.id), seg))) {
        const byId = new Map(data.map((seg) => [seg.id, seg]));
        detail.transcript_segments = detail.transcript_segments.map((s) => byId.get(s.id) || s);
        renderDetail(detail);
      }
    } else if (name === "conversation" && data && typeof data === "object") {
      onConversationEvent(data);
    }
  }

  function onConversationEvent(event) {
    const note = $("live-note");
    if (event.type === "memory_processing_started") {
      note.replaceChildren("Wrapping up the conversation…");
    } else if (event.type === "memory_created" && event.memory) {
      const memory = event.memory;
      if (memory.id === liveConversationId || !liveConversationId) {
        liveSegments.clear();
        liveConversationId = null;
        $("live-transcript").replaceChildren();
        $("live-empty").hidden = false;
      }
      note.replaceChildren(
        "Conversation saved. ",
        el("a", { href: `#conversation/${encodeURIComponent(memory.id)}`, text: "Open it" }),
      );
      if (listLoaded) loadConversations(true);
      if (detail && detail.id === memory.id) openConversation(memory.id);
    }
  }

  function putLiveSegment(seg) {
    liveSegments.set(seg.id, seg);
    const list = $("live-transcript");
    $("live-empty").hidden = true;
    const item = segmentItem(seg, offset(seg.start));
    const existing = list.querySelector(`li[data-id="${CSS.escape(seg.id)}"]`);
    if (existing) {
      existing.replaceWith(item);
      return;
    }
    const after = [...list.children].find((li) => (liveSegments.get(li.dataset.id)?.start ?? 0) > seg.start);
    list.insertBefore(item, after || null);
  }

  async function loadLiveConversation() {
    let page;
    try {
      page = await api("/v1/conversations/page?limit=5");
    } catch (_) {
      return;
    }
    const current = page.items.find((c) => c.status === "in_progress");
    if (!current) return;
    liveConversationId = current.id;
    for (const seg of current.transcript_segments) {
      if (!liveSegments.has(seg.id)) putLiveSegment(seg);
    }
    $("live-note").replaceChildren(
      el("a", { href: `#conversation/${encodeURIComponent(current.id)}`, text: "Open this conversation" }),
    );
  }

  function findLiveConversationSoon() {
    clearTimeout(liveLookup);
    liveLookup = setTimeout(() => {
      if (!liveConversationId && token) loadLiveConversation();
    }, 2000);
  }

  // ---- conversations --------------------------------------------------------------------------

  async function loadConversations(reset) {
    if (reset) listOffset = 0;
    let page;
    try {
      page = await api(`/v1/conversations/page?limit=${PAGE_SIZE}&offset=${listOffset}`);
    } catch (error) {
      if (error.status !== 401) $("conversations-empty").textContent = `Could not load conversations: ${error.message}`;
      $("conversations-empty").hidden = false;
      return;
    }
    listLoaded = true;
    const list = $("conversation-list");
    if (reset) list.replaceChildren();
    for (const conversation of page.items) list.append(conversationItem(conversation));
    listOffset += page.items.length;
    $("conversations-empty").textContent = "No conversations yet.";
    $("conversations-empty").hidden = page.total > 0;
    $("more-conversations").hidden = listOffset >= page.total;
  }

  function conversationItem(conversation) {
    const segments = conversation.transcript_segments;
    const who = [...speakersOf(conversation).values()].join(", ");
    const first = segments.length ? segments[0].text : "";
    const excerpt = first.length > 120 ? `${first.slice(0, 117)}…` : first;
    const title = el("span", { className: "title", text: when(conversation.started_at) });
    const badge = conversation.status === "in_progress" ? el("span", { className: "badge", text: "in progress" }) : null;
    return el(
      "li",
      {},
      el(
        "a",
        { href: `#conversation/${encodeURIComponent(conversation.id)}` },
        title,
        badge,
        el("span", { className: "excerpt", text: `${minutes(conversation)} · ${who || "no speech"}` }),
        el("span", { className: "excerpt", text: excerpt }),
      ),
    );
  }

  async function openConversation(id, focus = false) {
    $("conversation-list-view").hidden = true;
    $("conversation-detail").hidden = false;
    $("detail-error").textContent = "";
    if (!detail || detail.id !== id) {
      $("detail-title").textContent = "Loading…";
      $("detail-meta").textContent = "";
      $("detail-speakers").replaceChildren();
      $("detail-segments").replaceChildren();
    }
    try {
      detail = await api(`/v1/conversations/${encodeURIComponent(id)}`);
    } catch (error) {
      if (error.status === 401) return;
      detail = null;
      $("detail-title").textContent = "Conversation not found";
      $("detail-error").textContent = error.message;
      return;
    }
    renderDetail(detail);
    if (focus) $("detail-title").focus();
  }

  function renderDetail(conversation) {
    const segments = conversation.transcript_segments;
    const speakers = speakersOf(conversation);
    $("detail-title").textContent = when(conversation.started_at);
    $("detail-meta").textContent = [
      conversation.status === "in_progress" ? "In progress" : "Finished",
      `${segments.length} turn${segments.length === 1 ? "" : "s"}`,
      minutes(conversation),
    ].join(" · ");
    $("detail-close").hidden = conversation.status !== "in_progress";

    const speakerList = $("detail-speakers");
    speakerList.replaceChildren();
    for (const [speakerId, name] of speakers) speakerList.append(speakerRow(conversation, speakerId, name));

    const started = Date.parse(conversation.started_at);
    $("detail-segments").replaceChildren(
      ...segments.map((seg) =>
        segmentItem(seg, Number.isNaN(started) ? offset(seg.start) : clock(new Date(started + seg.start * 1000))),
      ),
    );
  }

  function speakerRow(conversation, speakerId, name) {
    const label = el("span", { className: name === "me" ? "speaker me" : "speaker", text: name });
    const rename = el("button", { type: "button", className: "quiet", "aria-label": `Rename ${name}` }, "Rename");
    const row = el("li", { "data-speaker": speakerId }, label, rename);
    rename.addEventListener("click", () => {
      const inputId = `rename-${speakerId}`;
      const input = el("input", { id: inputId, name: "name", value: name === "me" ? "" : name, maxlength: 100, required: true });
      const form = el(
        "form",
        { className: "rename" },
        el("label", { for: inputId, className: "visually-hidden", text: `New name for ${name}` }),
        input,
        el("button", { type: "submit" }, "Save"),
        el("button", { type: "button", className: "quiet", "data-action": "me" }, "It's me"),
        el("button", { type: "button", className: "quiet", "data-action": "cancel" }, "Cancel"),
      );
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        const value = input.value.trim();
        if (value) relabel(conversation.id, { speaker_id: speakerId, name: value });
        else input.focus();
      });
      form.querySelector('[data-action="me"]').addEventListener("click", () =>
        relabel(conversation.id, { speaker_id: speakerId, is_user: true }),
      );
      form.querySelector('[data-action="cancel"]').addEventListener("click", () => renderDetail(detail));
      row.replaceChildren(form);
      input.focus();
      input.select();
    });
    return row;
  }

  async function relabel(conversationId, change) {
    $("detail-error").textContent = "";
    try {
      detail = await api(`/v1/conversations/${encodeURIComponent(conversationId)}/speakers`, {
        method: "PATCH",
        body: change,
      });
    } catch (error) {
      if (error.status !== 401) $("detail-error").textContent = `Could not rename: ${error.message}`;
      return;
    }
    renderDetail(detail);
    for (const seg of detail.transcript_segments) {
      if (liveSegments.has(seg.id)) putLiveSegment(seg);
    }
    loadConversations(true); // names in the list changed
    const row = $("detail-speakers").querySelector(`li[data-speaker="${change.speaker_id}"] button`);
    if (row) row.focus();
  }

  async function closeConversation() {
    if (!detail) return;
    try {
      detail = await api(`/v1/conversations/${encodeURIComponent(detail.id)}/close`, { method: "POST" });
      renderDetail(detail);
    } catch (error) {
      if (error.status !== 401) $("detail-error").textContent = `Could not close it: ${error.message}`;
    }
  }

  // ---- search ---------------------------------------------------------------------------------

  async function search(event) {
    event.preventDefault();
    const q = $("search-q").value.trim();
    const status = $("search-status");
    const results = $("search-results");
    if (!q) return;
    status.textContent = "Searching…";
    let found;
    try {
      found = await api(`/v1/memory/search?${new URLSearchParams({ q, limit: "20" })}`);
    } catch (error) {
      if (error.status !== 401) status.textContent = `Search failed: ${error.message}`;
      return;
    }
    results.replaceChildren(...found.items.map(hitItem));
    status.textContent = found.items.length
      ? `${found.items.length} result${found.items.length === 1 ? "" : "s"}`
      : "Nothing in memory matches.";
  }

  function hitItem(hit) {
    const date = new Date(hit.start * 1000);
    return el(
      "li",
      {},
      el(
        "a",
        { href: `#conversation/${encodeURIComponent(hit.conversation_id)}` },
        el("span", { className: "title", text: hit.speaker || (hit.is_user ? "me" : "Someone") }),
        el("span", { className: "excerpt", text: when(date.toISOString()) }),
        el("span", { className: "excerpt", text: hit.text }),
      ),
    );
  }

  // ---- chat -----------------------------------------------------------------------------------

  function describeTool(name, args) {
    let parsed = args;
    if (typeof args === "string") {
      try {
        parsed = JSON.parse(args);
      } catch (_) {
        parsed = args;
      }
    }
    const query = parsed && typeof parsed === "object" ? parsed.query || parsed.text || parsed.id : null;
    if (/search|memory/i.test(name || "") && query) return `searched memory: “${query}”`;
    if (query) return `${name}: “${query}”`;
    return `used ${name || "a tool"}`;
  }

  async function sendChat(event) {
    event.preventDefault();
    if (chatBusy) return;
    const box = $("chat-message");
    const message = box.value.trim();
    if (!message) return;
    const log = $("chat-log");
    const error = $("chat-error");
    error.textContent = "";
    log.append(el("li", { className: "user", text: message }));
    const reply = el("li", { className: "agent", "aria-busy": "true", text: "…" });
    let replyText = "";
    let thinking = null;
    log.append(reply);
    box.value = "";
    chatBusy = true;
    $("chat-send").disabled = true;
    const fail = (detailText) => {
      reply.classList.add("failed");
      reply.textContent = detailText;
    };
    try {
      const response = await fetch("/v1/chat", {
        method: "POST",
        headers: authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
        body: JSON.stringify({ message }),
        cache: "no-store",
      });
      if (response.status === 401) {
        signOut("Your token is no longer accepted. Sign in again.");
        return;
      }
      if (response.status === 409) {
        fail(`Your agent is still answering another message; try again when it is done. (${await detailOf(response)})`);
        return;
      }
      if (!response.ok) {
        fail(await detailOf(response));
        return;
      }
      await readEvents(response, (name, data) => {
        if (name === "reasoning" && data && data.text) {
          if (!thinking) {
            thinking = el("p");
            log.insertBefore(el("li", { className: "tool" }, el("details", {}, el("summary", {}, "Thinking"), thinking)), reply);
          }
          thinking.textContent += data.text;
        } else if (name === "tool_call" && data) {
          log.insertBefore(el("li", { className: "tool", text: describeTool(data.name, data.arguments) }), reply);
        } else if (name === "tool_return" && data && data.status && data.status !== "success") {
          log.insertBefore(el("li", { className: "tool", text: `${data.name || "a tool"} failed` }), reply);
        } else if (name === "assistant" && data && typeof data.text === "string") {
          replyText += data.text;
          reply.textContent = replyText;
        } else if (name === "error") {
          fail(data && data.detail ? data.detail : "The agent could not answer.");
        } else if (name === "done" && !replyText && !reply.classList.contains("failed")) {
          reply.textContent = "(no reply)";
        }
      });
    } catch (_) {
      fail("The connection to the service was lost.");
    } finally {
      reply.removeAttribute("aria-busy");
      chatBusy = false;
      $("chat-send").disabled = false;
    }
  }

  // ---- wiring ---------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("sign-in-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", () => signOut());
    for (const tab of TABS) {
      const button = $(`tab-${tab}`);
      button.addEventListener("click", () => {
        location.hash = tab;
      });
      button.addEventListener("keydown", onTabKey);
    }
    window.addEventListener("hashchange", route);
    $("refresh-conversations").addEventListener("click", () => loadConversations(true));
    $("more-conversations").addEventListener("click", () => loadConversations(false));
    $("detail-close").addEventListener("click", closeConversation);
    $("search-form").addEventListener("submit", search);
    $("chat-form").addEventListener("submit", sendChat);
    $("chat-message").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        $("chat-form").requestSubmit();
      }
    });
    if (token) start();
    else $("sign-in").hidden = false;
  });
})();
