// Floe console: keeps the page's live section current; the page itself
// is never reloaded. An update waits while a control in the section has
// the focus (a half-chosen move) and while a button in it is pressed:
// replaced between press and release, a button would swallow its click.
//
// Over HTTP/2 (the admin listener with TLS) the controller sends the
// section as server-sent events whenever it changed. Over HTTP/1.1 a
// browser opens at most six connections to one host and an open event
// stream keeps one busy, so a handful of console pages (tabs, windows,
// pages kept in the back/forward cache) would leave none for the next
// page: there the page asks for the section every refresh instead, with
// the version it holds as its ETag (304 while unchanged), and holds no
// connection between asks. Either way a page asks only while it is shown.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var status = document.getElementById("live-status");
  if (!live) return;
  window.floeLoadedAt = window.floeLoadedAt || Date.now();
  var page = encodeURIComponent(live.getAttribute("data-page"));
  var refresh = Number(live.getAttribute("data-refresh-ms")) || 1000;
  var nav = (performance.getEntriesByType && performance.getEntriesByType("navigation")[0]) || {};
  var stream = nav.nextHopProtocol === "h2" || nav.nextHopProtocol === "h3";
  window.floeLiveBy = stream ? "events" : "polling";
  var pending = null;
  var pendingVersion = null;
  var pressed = false;
  var source = null;
  var timer = null;
  var asking = false;
  var shownNow = false;

  function say(s) {
    if (status) status.textContent = s;
  }
  function version() {
    return pendingVersion || live.getAttribute("data-version") || "";
  }
  function busy() {
    var a = document.activeElement;
    return (
      pressed ||
      (a && live.contains(a) && (a.tagName === "SELECT" || a.tagName === "INPUT"))
    );
  }
  function apply() {
    if (pending === null || busy()) return;
    live.innerHTML = pending;
    if (pendingVersion) live.setAttribute("data-version", pendingVersion);
    pending = null;
    pendingVersion = null;
    document.body.setAttribute("data-updated", String(Date.now()));
  }
  function receive(html, v) {
    pending = html;
    pendingVersion = v || null;
    apply();
  }
  function loggedOut() {
    stop();
    window.location.assign("/console/login");
  }

  function openStream() {
    source = new EventSource(
      "/console/events?page=" + page + "&version=" + encodeURIComponent(version())
    );
    source.addEventListener("live", function (e) {
      receive(e.data, e.lastEventId);
    });
    source.addEventListener("logout", loggedOut);
    source.onopen = function () {
      say("live");
    };
    source.onerror = function () {
      say("reconnecting…");
    };
  }
  function poll() {
    timer = null;
    asking = true;
    fetch("/console/live?page=" + page, {
      headers: { "If-None-Match": '"' + version() + '"' },
      cache: "no-store",
      credentials: "same-origin",
    })
      .then(function (r) {
        if (r.status === 401) return loggedOut();
        if (r.status === 304) return say("live");
        if (!r.ok) throw new Error(String(r.status));
        var v = (r.headers.get("ETag") || "").replace(/"/g, "");
        return r.text().then(function (html) {
          receive(html, v);
          say("live");
        });
      })
      .catch(function () {
        say("reconnecting…");
      })
      .then(function () {
        asking = false;
        if (shownNow && timer === null) timer = setTimeout(poll, refresh);
      });
  }
  function start() {
    if (shownNow) return;
    shownNow = true;
    if (stream) openStream();
    else if (!asking) poll();
  }
  function stop() {
    shownNow = false;
    if (source !== null) {
      source.close();
      source = null;
    }
    if (timer !== null) {
      clearTimeout(timer);
      timer = null;
    }
    say("paused");
  }
  function shown() {
    if (document.visibilityState === "hidden") stop();
    else start();
  }

  function later() {
    setTimeout(apply, 0);
  }
  function released() {
    pressed = false;
    later();
  }
  document.addEventListener("visibilitychange", shown);
  window.addEventListener("pagehide", stop);
  window.addEventListener("pageshow", shown);
  document.addEventListener("focusout", later);
  document.addEventListener(
    "pointerdown",
    function (e) {
      pressed = live.contains(e.target);
    },
    true
  );
  document.addEventListener("pointerup", released, true);
  document.addEventListener("pointercancel", released, true);
  shown();
})();
