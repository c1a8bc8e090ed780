// Live updates for the lbprovider dashboard.
// The server streams "change" events naming topics (ledger, services, pools, ...); each live
// fragment on the page listens for "lbp-<topic>" on <body> and re-fetches itself (hx-trigger).
// When server-sent events are unavailable, every fragment is refreshed on a timer instead.
(function () {
  "use strict";
  var source = null;
  var pollTimer = null;
  var retryTimer = null;

  function app() { return document.getElementById("app"); }

  function fire(topics) {
    topics.forEach(function (t) {
      if (t) { htmx.trigger(document.body, "lbp-" + t); }
    });
  }

  function setStatus(mode) {
    var el = document.getElementById("live-status");
    document.documentElement.dataset.live = mode;
    if (!el) { return; }
    el.dataset.mode = mode;
    el.textContent = mode === "sse" ? "live" : (mode === "polling" ? "polling" : "offline");
    el.title = mode === "sse" ? "Live updates (server-sent events)" :
      "Refreshing every " + Math.round(pollMs() / 1000) + " s";
  }

  function pollMs() {
    var el = app();
    var ms = el ? parseInt(el.dataset.pollMs || "10000", 10) : 10000;
    return ms > 0 ? ms : 10000;
  }

  function startPolling() {
    if (pollTimer === null) {
      pollTimer = window.setInterval(function () { fire(["all"]); }, pollMs());
    }
    setStatus("polling");
  }

  function stopPolling() {
    if (pollTimer !== null) { window.clearInterval(pollTimer); pollTimer = null; }
  }

  function connect() {
    var el = app();
    if (!el || el.dataset.live !== "on") { return; }
    if (!window.EventSource) { startPolling(); return; }
    if (source !== null) { return; }
    source = new EventSource("/events");
    source.addEventListener("hello", function () { stopPolling(); setStatus("sse"); });
    source.addEventListener("change", function (e) { fire(String(e.data).split(",")); });
    source.addEventListener("bye", function (e) {
      if (e.data === "shutdown") { reconnectLater(); }
    });
    source.onerror = function () {
      // The browser retries by itself while the stream is merely interrupted; until it is
      // back, refresh by polling so the page never goes stale.
      startPolling();
      if (source && source.readyState === EventSource.CLOSED) { reconnectLater(); }
    };
  }

  function reconnectLater() {
    if (source !== null) { source.close(); source = null; }
    startPolling();
    if (retryTimer === null) {
      retryTimer = window.setTimeout(function () { retryTimer = null; connect(); }, 5000);
    }
  }

  document.addEventListener("DOMContentLoaded", connect);
  // A boosted navigation (e.g. right after signing in) may bring the live marker in.
  document.addEventListener("htmx:afterSettle", function () {
    if (source === null && pollTimer === null) { connect(); }
  });
})();
