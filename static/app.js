// actscope: keyboard shortcuts and token tooltips. Every page also works without this file.
(function () {
  "use strict";
  var tip = null;

  function tokenLabel(el) {
    var act = el.getAttribute("data-act");
    var text = el.getAttribute("data-tip") || el.getAttribute("title") || "";
    // The title is `"token": value`; keep the token part and show the exact value.
    var tok = text.replace(/: [^:]*$/, "");
    return act === null ? text : tok + "  " + act;
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

  document.addEventListener("DOMContentLoaded", function () {
    tip = document.getElementById("tip");
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
    else if (e.key === "r") { follow("a#random-unit"); }
    else if (e.key === "/") {
      var box = document.getElementById("search-input");
      if (box) { e.preventDefault(); box.focus(); box.select(); }
    }
    else if (e.key === "Escape") { hideTip(); }
  });
})();
