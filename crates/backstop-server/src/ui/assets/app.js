// Backstop's web UI: live updates on top of pages that read without it.
// Every value goes into the page as text (textContent), never as markup.

const TERMINAL = ["succeeded", "failed", "dead", "cancelled"];

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n, unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return unit === 0 ? `${n} B` : `${value.toFixed(1)} ${units[unit]}`;
}

function seconds(s) {
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function when(iso) {
  return iso.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", "Z");
}

// Show a JobProgress in a `[data-progress]` block.
function showProgress(block, p) {
  if (!block || !p) return;
  const bar = block.querySelector("progress");
  if (p.bytes_total > 0) { bar.max = p.bytes_total; bar.value = Math.min(p.bytes_done, p.bytes_total); }
  const set = (field, text) => { const el = block.querySelector(`[data-field="${field}"]`); if (el) el.textContent = text; };
  set("bytes", `${bytes(p.bytes_done)} of ${bytes(p.bytes_total)}`);
  set("files", `${p.files_done} of ${p.files_total} files`);
  set("rate", `${bytes(p.rate)}/s`);
  set("eta", p.eta_seconds == null ? "–" : seconds(p.eta_seconds));
}

function item(cls, parts) {
  const li = document.createElement("li");
  li.className = cls;
  for (const [tag, cls2, text] of parts) {
    const el = document.createElement(tag);
    if (cls2) el.className = cls2;
    el.textContent = text;
    li.append(el, " ");
  }
  return li;
}

// The job page: follow the job's event stream until it ends, then reload.
function followJob(section) {
  if (TERMINAL.includes(section.dataset.state)) return;
  const list = section.querySelector("[data-events]");
  const url = `/jobs/${encodeURIComponent(section.dataset.job)}/live?after=${encodeURIComponent(section.dataset.after || "0")}`;
  const source = new EventSource(url);
  source.addEventListener("progress", (ev) => showProgress(section.querySelector("[data-progress]"), JSON.parse(ev.data).data));
  source.addEventListener("log", (ev) => {
    const e = JSON.parse(ev.data);
    list.append(item(`log ${e.data.level}`, [["time", "", when(e.time)], ["span", "level", e.data.level], ["span", "message", e.data.message]]));
  });
  source.addEventListener("state", (ev) => {
    const e = JSON.parse(ev.data);
    const parts = [["time", "", when(e.time)], ["span", "", "state"], ["strong", "", e.data.state]];
    if (e.data.error) parts.push(["span", "error", e.data.error]);
    list.append(item("state-change", parts));
    const state = section.querySelector('[data-field="state"] .state');
    if (state) { state.textContent = e.data.state; state.className = `state ${e.data.state}`; }
    if (TERMINAL.includes(e.data.state)) {
      source.close();
      setTimeout(() => location.reload(), 500);
    }
  });
}

// The dashboard: poll the running jobs; update their bars, reload when the set changes.
function followRunning(section) {
  const shown = () => [...section.querySelectorAll("tr[data-job]")].map((tr) => tr.dataset.job).sort().join(",");
  const tick = async () => {
    try {
      const answer = await fetch("/live/running", { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (answer.status === 401) { location.href = "/login"; return; }
      if (!answer.ok) return;
      const page = await answer.json();
      const ids = page.items.map((j) => j.id).sort().join(",");
      if (ids !== shown()) { location.reload(); return; }
      for (const job of page.items) {
        const row = [...section.querySelectorAll("tr[data-job]")].find((tr) => tr.dataset.job === job.id);
        if (row) showProgress(row.querySelector("[data-progress]"), job.progress);
      }
    } catch (_) { /* the service restarts: try again next time */ }
  };
  setInterval(tick, 2000);
}

// A note under a list (`[data-note]`), made when missing.
function note(box, text, error) {
  let el = box.querySelector("[data-note]");
  if (!el) { el = document.createElement("span"); el.dataset.note = ""; box.append(el); }
  el.textContent = text;
  el.className = error ? "error" : "empty";
}

// A plan's form: the schedule's next fires, as the API computes them, while it is typed.
function previewSchedule(form) {
  const schedule = form.querySelector("[name=schedule]");
  const zone = form.querySelector("[name=timezone]");
  const box = form.querySelector("[data-fires]");
  if (!schedule || !zone || !box) return;
  const list = box.querySelector("ol");
  let timer = null;
  const show = async () => {
    const text = schedule.value.trim();
    if (!text) { list.replaceChildren(); note(box, "none: the plan runs only when asked"); return; }
    const q = new URLSearchParams({ schedule: text, timezone: zone.value.trim() || "UTC" });
    try {
      const answer = await fetch(`/live/schedule?${q}`, { credentials: "same-origin", headers: { Accept: "application/json" } });
      const body = await answer.json();
      list.replaceChildren();
      if (!answer.ok) { note(box, body.error ? body.error.message : "not a schedule", true); return; }
      for (const t of body.fires) {
        const li = document.createElement("li");
        li.textContent = when(t);
        list.append(li);
      }
      note(box, body.fires.length ? "" : "it never fires");
    } catch (_) { /* the service restarts: keep what is shown */ }
  };
  const later = () => { clearTimeout(timer); timer = setTimeout(show, 300); };
  schedule.addEventListener("input", later);
  zone.addEventListener("input", later);
}

// Forms that destroy something ask first.
for (const form of document.querySelectorAll("form[data-confirm]")) {
  form.addEventListener("submit", (ev) => { if (!window.confirm(form.dataset.confirm)) ev.preventDefault(); });
}

const planForm = document.querySelector("form#plan");
if (planForm) previewSchedule(planForm);
const job = document.querySelector("#job[data-job]");
if (job) followJob(job);
const running = document.querySelector("#running[data-live-list]");
if (running) followRunning(running);
