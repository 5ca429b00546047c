// Live updates: the server pushes every change it sees (server-sent
// events); the page reloads its content in place and records changes of
// volume robustness in the activity list.
(function () {
  "use strict";
  var main = document.getElementById("content");
  var feed = document.getElementById("feed");
  var live = document.getElementById("live");
  var seen = {};
  var timer = null;

  function remember() {
    document.querySelectorAll("[data-rob-of]").forEach(function (el) {
      if (!(el.dataset.robOf in seen)) seen[el.dataset.robOf] = el.textContent.trim();
    });
  }

  // typing: a form field on the page holds something the user typed,
  // which a refresh would wipe; the refresh waits until it is submitted.
  function typing() {
    return Array.prototype.some.call(main.querySelectorAll("input:not([type=hidden])"), function (i) {
      return i.value !== i.defaultValue;
    });
  }

  function refresh() {
    timer = null;
    fetch(location.href, { headers: { "X-Partial": "1" }, credentials: "same-origin" })
      .then(function (r) { return r.text(); })
      .then(function (html) {
        if (typing()) { soon(); return; }
        main.innerHTML = html;
        remember();
      });
  }

  var static_ = document.body.hasAttribute("data-static");

  function soon() {
    if (static_) return;
    if (!timer) timer = setTimeout(refresh, typing() ? 1000 : 400);
  }

  function robustness(c) {
    if (!c.robustness) return;
    var before = seen[c.name];
    seen[c.name] = c.robustness;
    document.querySelectorAll('[data-rob-of="' + CSS.escape(c.name) + '"]').forEach(function (el) {
      el.textContent = c.robustness;
      el.className = "rob rob-" + c.robustness;
    });
    if (before === undefined || before === c.robustness) return;
    var li = document.createElement("li");
    li.dataset.volume = c.name;
    li.dataset.robustness = c.robustness;
    li.textContent = new Date().toLocaleTimeString() + " " + c.name + ": " + before + " → " + c.robustness;
    feed.insertBefore(li, feed.firstChild);
  }

  remember();
  var es = new EventSource("/events");
  es.onopen = function () { live.textContent = "● live"; live.className = "live on"; soon(); };
  es.onerror = function () { live.textContent = "○ reconnecting"; live.className = "live"; };
  es.addEventListener("change", function (e) {
    var c = JSON.parse(e.data);
    if (c.kind === "Volume") robustness(c);
    soon();
  });
})();
