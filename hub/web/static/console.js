// fedhub console: call forms submit to /api/submit/<address> and follow the call live.
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
  const response = await fetch("/api/submit/" + form.dataset.address, {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({arguments: args}),
  });
  const answer = await response.json();
  if (!response.ok) return failed(out, answer);
  out.dataset.requestId = answer.request_id;
  out.textContent = "request " + answer.request_id;
  follow(form, answer.request_id);
}

function failed(out, answer) {
  out.className = "result failed";
  out.textContent = answer.error + ": " + answer.message + (answer.hint ? " (" + answer.hint + ")" : "");
}

// Live progress and the outcome of one call, as server-sent events.
function follow(form, requestId) {
  const out = form.querySelector(".result");
  const box = form.querySelector(".progress");
  const bar = box.querySelector("progress");
  const message = box.querySelector(".message");
  box.hidden = false;
  bar.removeAttribute("value");
  const source = new EventSource("/api/requests/" + requestId + "/events");
  source.addEventListener("progress", (event) => {
    const p = JSON.parse(event.data);
    if (p.fraction === null) bar.removeAttribute("value"); else bar.value = p.fraction;
    message.textContent = p.message;
  });
  source.addEventListener("result", (event) => {
    source.close();
    bar.value = 1;
    out.className = "result done";
    out.textContent = JSON.stringify(JSON.parse(event.data).result, null, 2);
  });
  source.addEventListener("failure", (event) => {
    source.close();
    box.hidden = true;
    failed(out, JSON.parse(event.data));
  });
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
