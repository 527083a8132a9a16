// Reads a zip with yauzl (the reader inside extract-zip) and reports what it saw.
//
// Usage: node yauzl_check.js MODULE list|read ARCHIVE.zip
//   MODULE is the installed package to load (yauzl2 or yauzl3: npm aliases of yauzl 2.x / 3.x).
//   list: central directory only (no member data read);
//   read: every member's data read, CRC-32 computed and compared with the central directory.
// Output: one line per entry, ENTRY <tab> size <tab> crc32-hex <tab> name-as-utf8-hex, then OK <count>.
// Exit 0 on success, 1 with "ERROR message" on stderr when yauzl refuses the archive, 2 on bad usage.
"use strict";
const zlib = require("zlib");

function crcTable() {
  const table = new Int32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c;
  }
  return table;
}
let table = null;
// zlib.crc32 is native from Node 20.15 / 22.2; a table-driven fallback keeps older Nodes working.
const crc32 = zlib.crc32 || function (data, value) {
  table = table || crcTable();
  let c = ~value;
  for (let i = 0; i < data.length; i++) c = table[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
};

function fail(message) {
  process.stderr.write("ERROR " + message + "\n");
  process.exit(1);
}

const [moduleName, mode, archive] = process.argv.slice(2);
if (!moduleName || !["list", "read"].includes(mode) || !archive) {
  process.stderr.write("usage: node yauzl_check.js yauzl2|yauzl3 list|read ARCHIVE.zip\n");
  process.exit(2);
}
const yauzl = require(moduleName);
const lines = [];
// Both paths run the same parser (yauzl's fromRandomAccessReader); from memory it is ~6x faster on
// 65,536 entries (no read syscall per directory record). Multi-GB archives are read from the file.
const fs = require("fs");
const IN_MEMORY_LIMIT = 256 * 1024 * 1024;
const options = { lazyEntries: true };
const opened = (callback) => fs.statSync(archive).size <= IN_MEMORY_LIMIT
  ? yauzl.fromBuffer(fs.readFileSync(archive), options, callback)
  : yauzl.open(archive, { ...options, autoClose: true }, callback);
opened((err, zip) => {
  if (err) return fail(err.message);
  let count = 0;
  zip.on("error", (e) => fail(e.message));
  zip.on("end", () => {
    lines.push("OK " + count);
    process.stdout.write(lines.join("\n") + "\n");
  });
  zip.on("entry", (entry) => {
    count++;
    const name = Buffer.from(entry.fileName, "utf8").toString("hex");
    if (mode === "list" || entry.fileName.endsWith("/")) {
      lines.push(["ENTRY", entry.uncompressedSize, entry.crc32.toString(16), name].join("\t"));
      return zip.readEntry();
    }
    zip.openReadStream(entry, (e, stream) => {
      if (e) return fail(entry.fileName + ": " + e.message);
      let crc = 0;
      let size = 0;
      stream.on("data", (chunk) => { crc = crc32(chunk, crc); size += chunk.length; });
      stream.on("error", (e2) => fail(entry.fileName + ": " + e2.message));
      stream.on("end", () => {
        if (crc >>> 0 !== entry.crc32) {
          return fail(entry.fileName + ": CRC " + (crc >>> 0).toString(16) + " != directory " + entry.crc32.toString(16));
        }
        lines.push(["ENTRY", size, (crc >>> 0).toString(16), name].join("\t"));
        zip.readEntry();
      });
    });
  });
  zip.readEntry();
});
