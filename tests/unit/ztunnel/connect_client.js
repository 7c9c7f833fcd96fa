// An independent HTTP/2 client (Node's http2 module, built on nghttp2) opening an HBONE tunnel:
// mTLS with the given SVID, ALPN h2, no SNI, CONNECT to the authority, send a line, print the
// status and what comes back. Usage: node connect_client.js HOST PORT AUTHORITY CERT KEY CA
const http2 = require("node:http2");
const fs = require("node:fs");
const [host, port, authority, cert, key, ca] = process.argv.slice(2);
const session = http2.connect(`https://${host}:${port}`, {
  cert: fs.readFileSync(cert), key: fs.readFileSync(key), ca: fs.readFileSync(ca),
  ALPNProtocols: ["h2"], minVersion: "TLSv1.3", servername: "",
  checkServerIdentity: () => undefined, // the SPIFFE ID is not a hostname
});
session.on("error", (err) => { console.log(`ERROR ${err.code || err.message}`); process.exit(3); });
const stream = session.request({ ":method": "CONNECT", ":authority": authority });
let body = "";
stream.on("response", (headers) => console.log(`STATUS ${headers[":status"]}`));
stream.on("data", (chunk) => { body += chunk; });
stream.on("end", () => { console.log(`BODY ${body}`); session.close(); });
stream.on("error", (err) => { console.log(`ERROR ${err.code || err.message}`); process.exit(3); });
stream.end("third party\n");
