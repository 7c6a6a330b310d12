// COCO RLE decoding for the page (masks arrive as pycocotools' compressed RLE:
// {size: [h, w], counts: str}). Tested against pycocotools in tests/server/test_web_browser.py.
"use strict";

window.resedisRle = (() => {
  /** Decode pycocotools' compressed counts string into run lengths (rleFrString). */
  function decodeCounts(s) {
    const counts = [];
    let p = 0;
    while (p < s.length) {
      let x = 0, k = 0, more = true;
      while (more) {
        const c = s.charCodeAt(p) - 48;
        x |= (c & 0x1f) << (5 * k);
        more = (c & 0x20) !== 0;
        p += 1;
        k += 1;
        if (!more && (c & 0x10)) x |= -1 << (5 * k);
      }
      if (counts.length > 2) x += counts[counts.length - 2];
      counts.push(x);
    }
    return counts;
  }

  /** RLE {size: [h, w], counts} -> Uint8Array (h*w, row-major, 1 = inside). COCO runs are column-major. */
  function decodeRle(rle) {
    const [h, w] = rle.size;
    const counts = typeof rle.counts === "string" ? decodeCounts(rle.counts) : rle.counts;
    const out = new Uint8Array(h * w);
    let pos = 0;
    counts.forEach((run, i) => {
      if (i % 2 === 1) {
        for (let j = pos; j < pos + run; j++) out[(j % h) * w + Math.floor(j / h)] = 1;
      }
      pos += run;
    });
    return out;
  }

  return { decodeCounts, decodeRle };
})();
