// actscope: keyboard shortcuts, token tooltips, and a unit page's links kept in step with
// its URL. Every page also works without this file (its links are plain page loads).
(function () {
  "use strict";
  var tip = null;

  function tokenLabel(el) {
    var act = el.getAttribute("data-act");
    var text = el.getAttribute("data-tip") || el.getAttribute("title") || "";
    // The title is `"token" (id N): value`; keep the token part and show the exact value.
    var tok = text.replace(/: [^:]*$/, "");
    var units = el.getAttribute("data-units");  // the try page: each source's top unit
    return act === null ? text : tok + "  " + act + (units ? "  " + units : "");
  }

  function showTip(el) {
    if (!tip) return;
    if (el.hasAttribute("title")) {           // avoid a second, native tooltip
      el.setAttribute("data-tip", el.getAttribute("title"));
      el.removeAttribute("title");
    }
    tip.textContent = tokenLabel(el);
    tip.hidden = false;
    var r = el.getBoundingClientRect();
    tip.style.left = (window.scrollX + r.left) + "px";
    tip.style.top = (window.scrollY + r.bottom + 4) + "px";
  }

  function hideTip() { if (tip) tip.hidden = true; }

  function isToken(el) { return el && el.classList && el.classList.contains("t") && el.hasAttribute("data-act"); }

  // -- a unit page's state (band, page, per_page, text, open) lives in the URL. Links and
  // the forms' hidden fields are rendered with the state of the page load; when htmx or
  // the full-sequence toggle changes the URL, they are brought in step with it here.
  function setLink(a, url) {
    a.setAttribute("href", url);
    if (a.hasAttribute("hx-get")) {
      a.setAttribute("hx-get", url.split("#")[0]);
      if (window.htmx) window.htmx.process(a);  // htmx reads hx-get when it processes an element
    }
  }

  function withParams(href, names, from) {
    var u = new URL(href, location.href);
    names.forEach(function (name) {
      if (from.has(name)) u.searchParams.set(name, from.get(name));
      else u.searchParams.delete(name);
    });
    return u.pathname + u.search + u.hash;
  }

  function withOpen(search, key) {
    // This page's URL with example `key` ("SEQ:POS") open, or none when key is null.
    var params = new URLSearchParams(search);
    if (key) params.set("open", key); else params.delete("open");
    var q = params.toString();
    return location.pathname + (q ? "?" + q : "");
  }

  function fullLinkUrl(a, cur) {
    // This page's URL with this example open, or closed when it is the open one.
    var open = a.getAttribute("aria-expanded") === "true" ? null : a.getAttribute("data-open");
    return withOpen(cur, open) + "#" + a.closest("li").id;
  }

  function syncState() {
    var cur = new URLSearchParams(location.search);
    document.querySelectorAll("a[data-keep]").forEach(function (a) {
      var url = withParams(a.getAttribute("href"), a.getAttribute("data-keep").split(" "), cur);
      if (url !== a.getAttribute("href")) setLink(a, url);
    });
    document.querySelectorAll("a.full-link[data-open]").forEach(function (a) {
      a.setAttribute("href", fullLinkUrl(a, cur));
    });
    // A form keeps the state its data-state names, as hidden fields.
    document.querySelectorAll("form[data-state]").forEach(function (form) {
      form.querySelectorAll("input.state").forEach(function (input) { input.remove(); });
      form.getAttribute("data-state").split(" ").forEach(function (name) {
        if (!cur.has(name)) return;
        var input = document.createElement("input");
        input.type = "hidden";
        input.className = "state";
        input.name = name;
        input.value = cur.get(name);
        form.prepend(input);
      });
    });
  }

  function setExpanded(a, on) {
    a.setAttribute("aria-expanded", on ? "true" : "false");
    a.textContent = (on ? "hide" : "show") + " full sequence";
    if (!on) document.getElementById(a.getAttribute("aria-controls")).innerHTML = "";
  }

  function pushOpen(key) {
    // {htmx: true}: htmx restores this entry (by loading its URL) on Back.
    history.pushState({ htmx: true }, "", withOpen(location.search, key));
    syncState();
  }

  function expand(a) {
    // One example is open at a time: the URL names one.
    document.querySelectorAll('a.full-link[aria-expanded="true"]').forEach(function (o) { setExpanded(o, false); });
    var box = document.getElementById(a.getAttribute("aria-controls"));
    return window.htmx.ajax("GET", a.getAttribute("data-seq"), { target: box, swap: "innerHTML" }).then(function () {
      setExpanded(a, true);
    });
  }

  function toggleFull(a) {
    if (a.getAttribute("aria-expanded") === "true") {
      setExpanded(a, false);
      pushOpen(null);
      return;
    }
    expand(a).then(function () { pushOpen(a.getAttribute("data-open")); });
  }

  function showOpenOfUrl() {
    // Back and Forward: the examples expanded as the URL says.
    var key = new URLSearchParams(location.search).get("open");
    document.querySelectorAll("a.full-link[data-open]").forEach(function (a) {
      var want = a.getAttribute("data-open") === key;
      if (want === (a.getAttribute("aria-expanded") === "true")) return;
      if (want && window.htmx) expand(a).then(syncState);
      else if (!want) setExpanded(a, false);
    });
  }

  document.addEventListener("click", function (e) {
    var a = e.target.closest && e.target.closest("a.full-link[data-open]");
    if (!a || !window.htmx || e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    toggleFull(a);
  });

  ["htmx:pushedIntoHistory", "htmx:replacedInHistory", "htmx:historyRestore", "htmx:afterSettle"].forEach(function (name) {
    document.addEventListener(name, syncState);
  });
  window.addEventListener("popstate", function () { setTimeout(function () { showOpenOfUrl(); syncState(); }, 0); });

  document.addEventListener("DOMContentLoaded", function () {
    tip = document.getElementById("tip");
    syncState();
  });
  document.addEventListener("mouseover", function (e) { if (isToken(e.target)) showTip(e.target); });
  document.addEventListener("mouseout", function (e) { if (isToken(e.target)) hideTip(); });
  document.addEventListener("focusin", function (e) { if (isToken(e.target)) showTip(e.target); });
  document.addEventListener("focusout", function (e) { if (isToken(e.target)) hideTip(); });

  // Back/Forward from the browser's page cache: a table's boxes show the view's values
  // (their value attributes), not what was typed there before leaving.
  window.addEventListener("pageshow", function (e) {
    if (!e.persisted) return;
    document.querySelectorAll("form[autocomplete=off]").forEach(function (f) { f.reset(); });
  });

  function follow(selector) {
    var a = document.querySelector(selector);
    if (a && a.href) window.location.href = a.href;
  }

  function toggleKeys() {
    var keys = document.getElementById("keys");
    if (!keys) return;
    keys.open = !keys.open;
    if (keys.open) keys.querySelector("summary").focus();
  }

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    var t = e.target;
    var tag = t && t.tagName;
    if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || (t && t.isContentEditable)) {
      if (e.key === "Escape") t.blur();
      return;
    }
    if (e.key === "j") { follow("a#next-unit"); }
    else if (e.key === "k") { follow("a#prev-unit"); }
    else if (e.key === "J") { follow("a#next-any"); }
    else if (e.key === "K") { follow("a#prev-any"); }
    else if (e.key === "r") { follow("a#random-unit"); }
    else if (e.key === "?") { e.preventDefault(); toggleKeys(); }
    else if (e.key === "g") {
      var go = document.getElementById("goto");
      if (go) { e.preventDefault(); go.focus(); go.select(); }
    }
    else if (e.key === "/") {
      var box = document.getElementById("search-input");
      if (box) { e.preventDefault(); box.focus(); box.select(); }
    }
    else if (e.key === "Escape") {
      hideTip();
      var keys = document.getElementById("keys");
      if (keys && keys.open) keys.open = false;
    }
  });
})();
