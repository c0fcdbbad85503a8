// fedhub console: submit function forms and follow calls. Plain JS, no library.
"use strict";

function show(box, job) {
  box.hidden = false;
  const bar = box.querySelector("progress");
  const up = job.transfers && (job.transfers.upload || job.transfers.download);
  if (job.progress !== null && job.progress !== undefined) bar.value = job.progress;
  else if (up && up.total) bar.value = up.done / up.total;
  else bar.removeAttribute("value");
  let message = job.message || "";
  for (const [way, t] of Object.entries(job.transfers || {})) {
    message += ` ${way} ${(t.done / 1048576).toFixed(1)}/${(t.total / 1048576).toFixed(1)} MiB`;
  }
  box.querySelector(".message").textContent = message;
  const state = box.querySelector(".state");
  state.textContent = `${job.state} · ${job.seconds} s · request ${job.request_id}`;
  state.className = `state state-${job.state}`;
  if (job.state === "completed") {
    bar.value = 1;
    box.querySelector(".result").textContent = job.result_preview;
    const base = `/api/calls/${job.request_id}/result?format=`;
    box.querySelector(".links").innerHTML =
      `Download: <a class="dl-json" href="${base}json">JSON</a> · <a class="dl-nc" href="${base}nc">NetCDF</a>` +
      ` · <a class="dl-npy" href="${base}npy">NumPy</a> · <a href="/calls/${job.request_id}">this call</a>`;
  } else if (job.state === "failed") {
    box.querySelector(".result").textContent = `${job.error.code}: ${job.error.message}`;
  }
}

async function follow(box, requestId) {
  for (;;) {
    const answer = await fetch(`/api/calls/${requestId}`);
    const job = await answer.json();
    if (!answer.ok) { box.hidden = false; box.querySelector(".result").textContent = job.error; return; }
    show(box, job);
    if (job.state !== "running") return;
    await new Promise((r) => setTimeout(r, 250));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form.call-form")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const box = form.querySelector(".outcome");
      box.hidden = false;
      box.querySelector(".state").textContent = "sending…";
      box.querySelector(".result").textContent = "";
      const answer = await fetch("/api/calls", { method: "POST", body: new FormData(form) });
      const job = await answer.json();
      if (!answer.ok) {
        box.querySelector(".state").textContent = "refused";
        box.querySelector(".result").textContent = job.error + (job.hint ? `\n${job.hint}` : "");
        return;
      }
      follow(box, job.request_id);
    });
  }
  const page = document.querySelector(".outcome[data-request]");
  if (page) follow(page, page.dataset.request);
});
