// The JavaScript client of the WebSocket guide (websocket.md), run as
// written in Node (20+, with --experimental-websocket; built in from 22).
//
// Harness around the spec code, kept apart from it:
// - the URL comes from YETI_WS_URL (the spec's is wss://localhost:9996/my-app/Message);
// - console.log/console.error print each call as one JSON array line, so the
//   test can parse what the spec code logs (e.g. ["Received:", {...}]);
// - when stdin closes the connection is closed, and the process ends.
// TLS is verified: the daemon's certificate is trusted via NODE_EXTRA_CA_CERTS.

const url = process.env.YETI_WS_URL;
const print = (...args) => process.stdout.write(JSON.stringify(args) + '\n');
console.log = print;
console.error = (...args) => print(...args.map((a) => (a instanceof Event ? `${a.type}: ${a.message ?? ''}` : a)));

// ---- websocket.md, "JavaScript Client" (URL from the environment) -------
const ws = new WebSocket(url);

ws.onopen = () => {
  console.log('Connected');

  // Send a message to the server
  ws.send(JSON.stringify({
    action: 'subscribe',
    topic: 'Message'
  }));
};

ws.onmessage = (event) => {
  const data = JSON.parse(event.data);
  console.log('Received:', data);
};

ws.onerror = (error) => {
  console.error('WebSocket error:', error);
};

ws.onclose = (event) => {
  console.log('Disconnected:', event.code, event.reason);
};
// ---- end of the spec's client -------------------------------------------

ws.addEventListener('open', () => {
  // ---- websocket.md, "Bidirectional Communication": send data ----------
  // Send data to the server
  ws.send(JSON.stringify({
    id: 'msg-new',
    title: 'From WebSocket',
    content: 'Sent via WS'
  }));
  // ---- end ---------------------------------------------------------------
});

process.stdin.on('end', () => ws.close());
process.stdin.resume();
