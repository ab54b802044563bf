// engine view: the little the pages need beyond HTML forms. Pick two runs to compare; sort tables.
"use strict";

function pickTwo() {
  const form = document.querySelector("form.compare-form");
  if (!form) return;
  const boxes = Array.from(form.querySelectorAll("input[name=run]"));
  const button = form.querySelector("#compare-button");
  const update = () => {
    const ticked = boxes.filter((b) => b.checked);
    boxes.forEach((b) => {
      b.disabled = !b.checked && ticked.length >= 2;
      b.closest("tr").classList.toggle("picked", b.checked);
    });
    button.disabled = ticked.length !== 2;
    button.textContent = ticked.length === 2
      ? "Compare " + ticked.map((b) => b.closest("tr").children[1].textContent).join(" ⟷ ")
      : "Tick two runs to compare (" + ticked.length + "/2)";
  };
  boxes.forEach((b) => b.addEventListener("change", update));
  update();
}

function sortable() {
  document.querySelectorAll("table.sortable").forEach((table) => {
    const heads = Array.from(table.tHead.rows[0].cells);
    heads.forEach((th, column) => {
      if (!th.dataset.sort) return;
      th.addEventListener("click", () => {
        const descending = !th.classList.contains("sorted-desc");
        heads.forEach((h) => h.classList.remove("sorted-asc", "sorted-desc"));
        th.classList.add(descending ? "sorted-desc" : "sorted-asc");
        const body = table.tBodies[0];
        const key = (row) => {
          const cell = row.cells[column];
          const raw = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent;
          const n = parseFloat(raw);
          return raw !== "" && !isNaN(n) && isFinite(raw) ? n : raw.toLowerCase();
        };
        const rows = Array.from(body.rows).sort((a, b) => {
          const x = key(a), y = key(b);
          const order = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : typeof x === "number" ? -1 : 1;
          return descending ? -order : order;
        });
        rows.forEach((r) => body.appendChild(r));
      });
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  pickTwo();
  sortable();
});
