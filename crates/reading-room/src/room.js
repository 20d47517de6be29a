// The reading room's only script: the worklist follows routing's changes
// (server-sent events; the rows come from the server, already escaped),
// each deadline counts down, and the editor saves drafts as the reader
// types. Everything else is plain forms.
(function () {
  "use strict";
  function left(ms) {
    const late = ms < 0;
    let m = Math.floor(Math.abs(ms) / 60000);
    const d = Math.floor(m / 1440), h = Math.floor((m % 1440) / 60);
    m = m % 60;
    const text = (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m";
    return late ? "overdue by " + text : "in " + text;
  }
  function countdown() {
    for (const t of document.querySelectorAll("time[data-deadline]")) {
      const at = Date.parse(t.dataset.deadline);
      if (!isNaN(at)) t.textContent = left(at - Date.now());
    }
  }
  countdown();
  setInterval(countdown, 30000);

  // The report editor saves the draft as the reader types (two seconds
  // after the last key), each save from the version the last one made: a
  // save from another tab or session in between is refused, and said. An
  // ended session loses nothing saved: sign in again and it is there.
  const report = document.getElementById("report");
  if (report) {
    const said = document.getElementById("autosave");
    let timer = null;
    let saving = false;
    const save = async function () {
      if (saving) { timer = setTimeout(save, 500); return; }
      saving = true;
      try {
        const body = new URLSearchParams(new FormData(report));
        const answer = await fetch(report.action, {
          method: "POST",
          credentials: "same-origin",
          headers: { accept: "application/json" },
          body: body,
        });
        const json = await answer.json();
        if (answer.ok) {
          report.elements.version.value = String(json.version);
          report.dataset.saved = String(json.version);
          said.textContent = "Draft version " + json.version + " saved.";
        } else if (answer.status === 401) {
          said.textContent = "Your session ended; the last saved draft is kept. Sign in again to go on.";
          window.location.href = "/room/sign-in";
        } else {
          said.textContent = "Not saved: " + json.error;
        }
      } catch (e) {
        said.textContent = "Not saved: " + e;
      } finally {
        saving = false;
      }
    };
    report.addEventListener("input", function () {
      if (report.dataset.lost) return;
      clearTimeout(timer);
      said.textContent = "Editing…";
      timer = setTimeout(save, 2000);
    });
  }
  // An open read that is taken away (released, reassigned, signed in
  // another tab) says so, and its buttons stop: the last saved draft is
  // kept.
  if (report && window.EventSource) {
    const held = document.getElementById("held");
    const watch = new EventSource("/room/worklist/events");
    watch.addEventListener("worklist", function (e) {
      const now = JSON.parse(e.data).held;
      const lost = now.indexOf(report.dataset.study) < 0;
      if (lost && held.hidden) {
        held.hidden = false;
        held.textContent = "You no longer hold this read (released, reassigned or signed): nothing more is saved " +
          "or signed from this page. The last saved draft is kept.";
        for (const b of report.querySelectorAll("button")) b.disabled = true;
        report.dataset.lost = "1";
        clearTimeout(timer);
      }
    });
  }
  const table = document.getElementById("worklist");
  if (!table || !window.EventSource) return;
  const status = document.getElementById("live");
  const source = new EventSource("/room/worklist/events");
  source.addEventListener("worklist", async function () {
    const rows = await fetch(table.dataset.rows, { credentials: "same-origin" });
    if (rows.status === 401) { window.location.href = "/room/sign-in"; return; }
    if (!rows.ok) { status.textContent = "The worklist did not refresh: " + rows.status; return; }
    table.tBodies[0].innerHTML = await rows.text();
    table.dataset.updated = String(Number(table.dataset.updated || 0) + 1);
    countdown();
  });
  source.addEventListener("failed", function (e) { status.textContent = "Live updates failed: " + e.data; });
  source.onerror = function () { status.textContent = "Live updates interrupted; retrying."; };
  source.onopen = function () { status.textContent = "Live: changes appear without a reload."; };
})();
