/* mtaserver panel: the settings pages' controls (templates/_fields.html).
 * Chips (type an extension, press space to add it, click a chip to remove it), the ADD COMMONLY
 * BLOCKED EXTENSIONS button, ADD/REMOVE lists, the tolerance read-out, the Single Server override
 * switches. No data leaves the page: the form is posted as usual and the server validates it all. */
(function () {
  "use strict";

  var EXTENSION = /^[A-Za-z0-9]{1,64}$/;
  var LEVELS = {
    tolerance_tag: { low: 20, medium: 33, high: 50 },
    tolerance_kill: { low: 66, medium: 75, high: 90 }
  };

  function showError(id, text) {
    var slot = id && document.getElementById(id);
    if (!slot) return;
    slot.textContent = text || "";
    slot.hidden = !text;
    var field = slot.closest(".field");
    if (field) field.classList.toggle("has-error", !!text);
  }

  function locked(el) {
    var fs = el.closest("fieldset[disabled]");
    return !!fs || el.disabled;
  }

  /* -- chips --------------------------------------------------------------------------------- */

  function chipValues(box) {
    return Array.prototype.map.call(box.querySelectorAll(".chip input[type=hidden]"), function (i) { return i.value.toLowerCase(); });
  }

  function addChip(box, value) {
    var name = box.getAttribute("data-name");
    if (chipValues(box).indexOf(value.toLowerCase()) >= 0) return false;
    var li = document.createElement("li");
    li.className = "chip";
    var hidden = document.createElement("input");
    hidden.type = "hidden";
    hidden.name = name;
    hidden.value = value.toLowerCase();
    var button = document.createElement("button");
    button.type = "button";
    button.className = "chip-remove";
    button.title = "remove " + hidden.value;
    button.setAttribute("aria-label", "remove " + hidden.value);
    button.textContent = hidden.value + " ";
    var x = document.createElement("span");
    x.setAttribute("aria-hidden", "true");
    x.textContent = "\u00d7";
    button.appendChild(x);
    li.appendChild(hidden);
    li.appendChild(button);
    box.querySelector(".chip-list").appendChild(li);
    return true;
  }

  /* Add every complete token typed; keep a bad one in the input with its error. True when all went in. */
  function commitChips(box) {
    var input = document.getElementById(box.getAttribute("data-input"));
    var errorId = box.getAttribute("data-error");
    var tokens = input.value.split(/[\s,]+/).filter(function (t) { return t.length; });
    var bad = [];
    tokens.forEach(function (t) {
      t = t.replace(/^\./, "");
      if (EXTENSION.test(t)) addChip(box, t); else bad.push(t);
    });
    input.value = bad.join(" ");
    showError(errorId, bad.length ? "\u201c" + bad.join(" ") + "\u201d: letters and digits only (e.g. exe), no dot" : "");
    return bad.length === 0;
  }

  function setupChips(box) {
    var input = document.getElementById(box.getAttribute("data-input"));
    input.addEventListener("keydown", function (ev) {
      if (ev.key === " " || ev.key === "Enter" || ev.key === ",") {
        ev.preventDefault();
        commitChips(box);
      } else if (ev.key === "Backspace" && input.value === "") {
        var last = box.querySelector(".chip-list .chip:last-child");
        if (last) last.remove();
      }
    });
    input.addEventListener("blur", function () { if (input.value.trim()) commitChips(box); });
    box.addEventListener("click", function (ev) {
      var chip = ev.target.closest(".chip-remove");
      if (!chip || locked(box)) return;
      var li = chip.closest(".chip");
      li.remove();
      input.focus();
    });
  }

  function setupCommon(button) {
    button.addEventListener("click", function () {
      var input = document.getElementById(button.getAttribute("data-target"));
      var box = input && input.closest("[data-chips]");
      if (!box) return;
      button.getAttribute("data-chips-add").split(/\s+/).forEach(function (t) { if (t) addChip(box, t); });
    });
  }

  /* -- ADD / REMOVE lists ---------------------------------------------------------------------- */

  function setupAddRemove(box) {
    var input = document.getElementById(box.getAttribute("data-input"));
    var list = box.querySelector("select");
    var store = box.querySelector(".addremove-values");
    var name = box.getAttribute("data-name");
    var errorId = box.getAttribute("data-error");

    function sync() {
      store.textContent = "";
      Array.prototype.forEach.call(list.options, function (o) {
        var h = document.createElement("input");
        h.type = "hidden";
        h.name = name;
        h.value = o.value;
        store.appendChild(h);
      });
      list.size = Math.max(list.options.length, 3);
    }

    function add() {
      var v = input.value.trim();
      if (!v) return;
      if (/\s/.test(v)) { showError(errorId, "\u201c" + v + "\u201d: no spaces"); return; }
      var exists = Array.prototype.some.call(list.options, function (o) { return o.value === v; });
      if (exists) { showError(errorId, "\u201c" + v + "\u201d is already in the list"); return; }
      list.add(new Option(v, v));
      input.value = "";
      showError(errorId, "");
      sync();
    }

    box.querySelector("[data-add]").addEventListener("click", add);
    input.addEventListener("keydown", function (ev) { if (ev.key === "Enter") { ev.preventDefault(); add(); } });
    box.querySelector("[data-remove]").addEventListener("click", function () {
      Array.prototype.filter.call(list.options, function (o) { return o.selected; }).forEach(function (o) { o.remove(); });
      sync();
    });
  }

  /* -- tolerance read-out ---------------------------------------------------------------------- */

  function setupTolerance(select) {
    var kind = select.getAttribute("data-tolerance");
    var custom = document.getElementById(select.id + "-custom");
    var out = select.closest(".field").querySelector("output");
    function update() {
      var pct = null, score = null, v = select.value;
      custom.disabled = v !== "custom" || locked(select);
      if (LEVELS[kind][v] !== undefined) {
        pct = LEVELS[kind][v];
        score = pct * 20 / 100;
      } else {
        var t = custom.value.trim();
        if (/^\d+(\.\d+)?%$/.test(t)) { pct = parseFloat(t); score = pct * 20 / 100; }
        else if (/^\d+(\.\d+)?$/.test(t)) { score = parseFloat(t); pct = score * 5; }
      }
      out.textContent = pct === null ? "?" : (Math.round(pct * 10) / 10) + "% = score " + (Math.round(score * 10) / 10) + " of 20";
    }
    select.addEventListener("change", update);
    custom.addEventListener("input", update);
    update();
  }

  /* -- Single Server: override switches -------------------------------------------------------- */

  function setupOverride(sw) {
    var block = sw.closest("[data-override]");
    var field = block.querySelector(".field");
    var badge = block.querySelector(".badge");
    function update() {
      var on = sw.checked;
      block.classList.toggle("is-overridden", on);
      badge.textContent = on ? "overridden" : "inherited";
      badge.className = "badge " + (on ? "accent" : "off");
      field.querySelectorAll("input, select, textarea, button").forEach(function (el) {
        if (!locked(sw)) el.disabled = !on;
      });
    }
    sw.addEventListener("change", update);
    update();
  }

  /* -- the form ---------------------------------------------------------------------------------- */

  function setupForm(form) {
    form.addEventListener("submit", function (ev) {
      var submitter = ev.submitter;
      if (submitter && submitter.getAttribute("formaction")) return; /* the DKIM key button: its own fields */
      var ok = true;
      form.querySelectorAll("[data-chips]").forEach(function (box) { if (!commitChips(box)) ok = false; });
      if (!ok) {
        ev.preventDefault();
        var first = form.querySelector(".has-error input, .has-error select, .has-error textarea");
        if (first) first.focus();
      }
    });
  }

  function init() {
    document.querySelectorAll("[data-chips]").forEach(setupChips);
    document.querySelectorAll("[data-chips-add]").forEach(setupCommon);
    document.querySelectorAll("[data-addremove]").forEach(setupAddRemove);
    document.querySelectorAll("select[data-tolerance]").forEach(setupTolerance);
    document.querySelectorAll("[data-override-switch]").forEach(setupOverride);
    document.querySelectorAll("form.settings").forEach(setupForm);
    var firstError = document.querySelector(".field.has-error input, .field.has-error select, .field.has-error textarea");
    if (firstError) firstError.focus();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init); else init();
})();
