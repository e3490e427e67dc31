// How numbers, sizes, durations and times read on the page.

export function count(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return Number(n).toLocaleString("en-US");
}

/** 11120128 -> "11.1M"; 2.5e9 -> "2.50G". */
export function si(n, digits = 3) {
  if (n === null || n === undefined || !Number.isFinite(Number(n))) return "–";
  const v = Number(n);
  const a = Math.abs(v);
  for (const [scale, unit] of [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]]) {
    if (a >= scale) return (v / scale).toPrecision(digits) + unit;
  }
  return String(Number(v.toPrecision(digits)));
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

export function percent(x, digits = 1) {
  if (x === null || x === undefined || !Number.isFinite(Number(x))) return "–";
  return `${(100 * x).toFixed(digits)}%`;
}

export function num(x, digits = 4) {
  if (x === null || x === undefined || !Number.isFinite(Number(x))) return "–";
  const v = Number(x);
  if (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5)) return v.toExponential(2);
  return String(Number(v.toPrecision(digits)));
}

/** Seconds -> "2 h 05 min", "3 min 07 s", "12.3 s". */
export function duration(s) {
  if (s === null || s === undefined || !Number.isFinite(Number(s))) return "–";
  s = Math.max(0, Number(s));
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(Math.round(s % 60)).padStart(2, "0")} s`;
  const hrs = Math.floor(m / 60);
  if (hrs < 48) return `${hrs} h ${String(m % 60).padStart(2, "0")} min`;
  return `${Math.floor(hrs / 24)} d ${hrs % 24} h`;
}

export function time(iso) {
  if (!iso) return "–";
  const d = new Date(iso.endsWith("Z") || /[+-]\d\d:\d\d$/.test(iso) ? iso : iso + "Z");
  return d.toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

export function parseTime(iso) {
  if (!iso) return null;
  return new Date(iso.endsWith("Z") || /[+-]\d\d:\d\d$/.test(iso) ? iso : iso + "Z").getTime();
}

/** "job_01a2337f36963349a7853fbcd5c2" -> "job_…53fbcd5c2": ids start with their creation time, so the
 *  distinguishing part is the random tail. */
export function shortId(id) {
  return id ? id.replace(/^([a-z]+_)[0-9a-f]+([0-9a-f]{9})$/, "$1…$2") : "–";
}

// A speed target as the engine's messages name it (core.spec.target_words): "cpu (1 thread)",
// "onnx-int8 (4 threads)", "cuda" (a GPU's time does not depend on the host's threads)
export function speedTarget(target, threads) {
  const t = target || "cpu";
  if (t === "cuda") return t;
  const n = threads || 1;
  return `${t} (${n} thread${n === 1 ? "" : "s"})`;
}
