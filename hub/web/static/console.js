// fedhub console: call forms send their values as JSON to /api/call/<address>.
"use strict";

function value(input) {
  const kind = input.dataset.kind;
  if (kind === "boolean") return input.checked;
  if (input.value === "") return undefined;
  if (kind === "number" || kind === "integer") return Number(input.value);
  if (kind === "json") return JSON.parse(input.value);
  return input.value;
}

async function call(form) {
  const out = form.querySelector(".result");
  const args = {};
  try {
    for (const input of form.querySelectorAll("[name]")) {
      if (input.disabled) continue;
      const v = value(input);
      if (v !== undefined) args[input.name] = v;
    }
  } catch (err) {
    out.hidden = false; out.className = "result failed"; out.textContent = "not JSON: " + err.message;
    return;
  }
  out.hidden = false; out.className = "result running"; out.textContent = "calling…";
  const response = await fetch("/api/call/" + form.dataset.address, {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({arguments: args}),
  });
  const answer = await response.json();
  if (response.ok) {
    out.className = "result done";
    out.textContent = JSON.stringify(answer.result, null, 2);
    out.dataset.requestId = answer.request_id;
  } else {
    out.className = "result failed";
    out.textContent = answer.error + ": " + answer.message + (answer.hint ? " (" + answer.hint + ")" : "");
  }
}

document.addEventListener("submit", (event) => {
  if (!event.target.matches("form.call")) return;
  event.preventDefault();
  call(event.target);
});
