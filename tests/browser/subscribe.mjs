// A GraphQL subscription through the `graphql-ws` client (graphql-transport-ws protocol), as a
// frontend makes it; or, with `legacy`, the older subscriptions-transport-ws protocol
// ("graphql-ws") spoken over a plain `ws` socket. Prints one JSON line per event, as it
// happens: {"next": <result>}, {"error": ...}, {"complete": true}, {"closed": {"code", "reason"}}.
// Ends after <count> results, or when the server completes, errs or closes.
//
// usage: node subscribe.mjs <ws url> <Authorization value> <query> <variables JSON> <count> [legacy]
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

const [url, authorization, query, variables, count, mode] = process.argv.slice(2);
const wanted = Number(count);
const print = (event) => process.stdout.write(JSON.stringify(event) + '\n');
const variablesValue = JSON.parse(variables);

if (mode === 'legacy') {
  const socket = new WebSocket(url, 'graphql-ws');
  let seen = 0;
  socket.on('open', () => {
    socket.send(JSON.stringify({ type: 'connection_init', payload: { Authorization: authorization } }));
  });
  socket.on('message', (data) => {
    const message = JSON.parse(data.toString());
    if (message.type === 'connection_ack') {
      socket.send(JSON.stringify({ id: '1', type: 'start', payload: { query, variables: variablesValue } }));
    } else if (message.type === 'data') {
      print({ next: message.payload });
      if (++seen >= wanted) {
        socket.close(1000);
      }
    } else if (message.type === 'error' || message.type === 'connection_error') {
      print({ error: message.payload });
    } else if (message.type === 'complete') {
      print({ complete: true });
    }
  });
  socket.on('close', (code, reason) => {
    print({ closed: { code, reason: reason.toString() } });
    process.exit(0);
  });
} else {
  const client = createClient({
    url,
    webSocketImpl: WebSocket,
    connectionParams: { Authorization: authorization },
    retryAttempts: 0,
    lazy: true,
    on: {
      closed: (event) => {
        print({ closed: { code: event.code, reason: event.reason } });
      },
    },
  });
  let seen = 0;
  const done = (code) => {
    client.dispose();
    setTimeout(() => process.exit(code), 50);
  };
  client.subscribe(
    { query, variables: variablesValue },
    {
      next: (result) => {
        print({ next: result });
        if (++seen >= wanted) {
          done(0);
        }
      },
      error: (error) => {
        print({ error: error && error.code ? { code: error.code, reason: error.reason } : error });
        done(0);
      },
      complete: () => {
        print({ complete: true });
        done(0);
      },
    },
  );
}
