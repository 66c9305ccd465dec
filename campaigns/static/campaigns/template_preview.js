"use strict";
// Live preview of message templates on the care-rule page. While staff type, each text is sent
// (debounced) to the admin's preview endpoint, which renders it with made-up sample data and
// counts SMS segments; the answer fills the box under the text. Without JavaScript the box
// shows the server-rendered preview of the saved text.
(function () {
  const DELAY_MS = 300;
  const timers = new WeakMap();
  const inFlight = new WeakMap();

  function field(block, name) {
    return block.querySelector('[name$="-' + name + '"]');
  }

  function valueOf(block, name) {
    const input = field(block, name);
    return input ? input.value : "";
  }

  function ruleKind(box) {
    const select = document.getElementById("id_kind");
    return select ? select.value : box.dataset.kind || "";
  }

  function csrfToken() {
    const input = document.querySelector('[name="csrfmiddlewaretoken"]');
    return input ? input.value : "";
  }

  function show(part, text) {
    part.textContent = text || "";
    part.hidden = !text;
  }

  function paint(box, answer) {
    show(box.querySelector(".template-preview-text"), answer.ok ? answer.text : "");
    show(box.querySelector(".template-preview-subject"), answer.ok ? answer.subject : "");
    show(box.querySelector(".template-preview-size"), answer.ok ? answer.size : "");
    show(box.querySelector(".template-preview-error"), answer.ok ? "" : answer.error);
  }

  function refresh(block) {
    const box = block.querySelector(".template-preview");
    // The "-empty" block is the hidden prototype Django clones for "Add another".
    if (!box || block.id.endsWith("-empty")) {
      return;
    }
    const data = new FormData();
    data.append("kind", ruleKind(box));
    ["channel", "language", "body", "subject"].forEach(function (name) {
      data.append(name, valueOf(block, name));
    });
    // Only the latest keystroke's answer matters: drop the one still on its way.
    const previous = inFlight.get(box);
    if (previous) {
      previous.abort();
    }
    const controller = new AbortController();
    inFlight.set(box, controller);
    fetch(box.dataset.url, {
      method: "POST",
      body: data,
      headers: { "X-CSRFToken": csrfToken() },
      credentials: "same-origin",
      signal: controller.signal,
    })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(function (answer) {
        paint(box, answer);
      })
      .catch(function (error) {
        if (error.name !== "AbortError") {
          paint(box, { ok: false, error: String(error) });
        }
      });
  }

  function schedule(block) {
    clearTimeout(timers.get(block));
    timers.set(block, setTimeout(refresh, DELAY_MS, block));
  }

  function blockOf(target) {
    const block = target.closest && target.closest(".inline-related");
    return block && block.querySelector(".template-preview") ? block : null;
  }

  function allBlocks() {
    return Array.from(document.querySelectorAll(".inline-related")).filter(function (block) {
      return block.querySelector(".template-preview");
    });
  }

  function onEdit(event) {
    if (event.target.id === "id_kind") {
      allBlocks().forEach(schedule);
      return;
    }
    const block = blockOf(event.target);
    if (block) {
      schedule(block);
    }
  }

  document.addEventListener("input", onEdit);
  document.addEventListener("change", onEdit);
  document.addEventListener("DOMContentLoaded", function () {
    // A page re-shown after a refused save holds texts that differ from the saved ones.
    allBlocks()
      .filter(function (block) {
        return valueOf(block, "body").trim();
      })
      .forEach(refresh);
  });
})();
