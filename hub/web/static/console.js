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

// The audit page: the chosen log goes to /api/audit as the request body.
function row(table, label, value) {
  const tr = table.insertRow();
  tr.insertCell().textContent = label;
  tr.insertCell().textContent = value;
}

async function audit(form) {
  const file = form.querySelector("[name=log]").files[0];
  const section = document.querySelector(".verdict");
  const state = section.querySelector(".state");
  section.hidden = false;
  state.className = "state running";
  state.textContent = "auditing " + file.name + "…";
  const response = await fetch("/api/audit", {method: "POST", body: file});
  const report = await response.json();
  for (const t of section.querySelectorAll("table, ol")) t.replaceChildren();
  if (!response.ok) {
    state.className = "state failed";
    state.textContent = report.error + ": " + report.message;
    return;
  }
  state.className = "state " + (report.ok ? "ok" : "failed");
  state.textContent = (report.ok ? "audit OK  " : "audit FAILED  ") + (report.log || file.name);
  const summary = section.querySelector(".summary");
  row(summary, "events", report.events);
  row(summary, "time", (report.time_range || []).join(" .. "));
  row(summary, "trust", report.trust);
  row(summary, "signatures", report.signatures_checked + " checked");
  row(summary, "checkpoints", report.checkpoints_verified + " verified");
  row(summary, "root", report.root || "");
  const requests = section.querySelector(".requests");
  for (const [outcome, count] of Object.entries(report.requests || {})) row(requests, outcome, count);
  const findings = section.querySelector(".findings");
  for (const f of report.findings || []) {
    const li = document.createElement("li");
    const first = report.first && f.position === report.first.position && f.check === report.first.check;
    li.className = first ? "finding first-bad" : "finding";
    li.dataset.position = f.position;
    const where = f.seq === null ? "entry " + f.position : "event " + f.seq;
    li.textContent = where + " (" + f.check + "): " + f.message;
    findings.append(li);
  }
}

document.addEventListener("submit", (event) => {
  if (!event.target.matches("form.audit")) return;
  event.preventDefault();
  audit(event.target);
});
