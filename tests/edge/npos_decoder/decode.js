// Reads an ESC/POS file with npos's parser (npm, not written here) and prints, as JSON,
// each printed line: its text decoded from GB18030 or GBK by iconv-lite, and the
// character size (GS ! / ESC !) it was printed at.
//
//     node decode.js RECEIPT.bin gb18030|gbk
//
// npos 0.1.19 knows every command our receipts use except GS ( k (the native QR);
// its rule (pL pH, then that many bytes) is added the way npos's README shows.
'use strict';

const fs = require('fs');
const iconv = require('iconv-lite');
const npos = require('npos');

const [file, encoding] = process.argv.slice(2);
const raw = fs.readFileSync(file);

npos.rules[npos.symbols.GS]['(k'] = [0, 'd16'];
const ast = npos.parser(npos.rules).analyze(raw);
if (ast.error) {
  process.stdout.write(JSON.stringify({error: String(ast.error.message)}));
  process.exit(0);
}

const lines = [];
const commands = [];
let size = {width: 1, height: 1};
let pending = [];
for (const node of ast.tree) {
  if (node.ascii === 'STX') {  // npos's text node: the bytes between commands
    const bytes = npos.codecs.text.decode(raw, [node]);
    let start = 0;
    for (let i = 0; i < bytes.length; i++) {
      if (bytes[i] === 0x0a) {  // LF prints the line
        pending.push(bytes.slice(start, i));
        lines.push({text: iconv.decode(Buffer.concat(pending), encoding), ...size});
        pending = [];
        start = i + 1;
      }
    }
    pending.push(bytes.slice(start));
    continue;
  }
  const name = `${node.ascii} ${node.fn || ''}`.trim();
  commands.push(name);
  const arg = raw[node.offset + 1 + (node.fn || '').length];
  if (name === 'ESC @') {
    size = {width: 1, height: 1};
  } else if (name === 'GS !') {
    size = {width: (arg >> 4) + 1, height: (arg & 0x0f) + 1};
  } else if (name === 'ESC !') {
    size = {width: arg & 0x20 ? 2 : 1, height: arg & 0x10 ? 2 : 1};
  }
}
const unprinted = iconv.decode(Buffer.concat(pending), encoding);
process.stdout.write(JSON.stringify({lines, commands, unprinted}));
