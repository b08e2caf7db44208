// Tollgate's GraphiQL: everything it loads comes from this server (see the page's
// Content-Security-Policy). Queries go to /graphql on the same origin; subscriptions to
// /graphql/ws (graphql-transport-ws), signed in with the Headers tab's Authorization.
(function () {
  var scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  var fetcher = GraphiQL.createFetcher({
    url: '/graphql',
    subscriptionUrl: scheme + '//' + window.location.host + '/graphql/ws',
    // Read when the socket opens: the Headers tab as GraphiQL keeps it.
    wsConnectionParams: function () {
      try {
        return JSON.parse(window.localStorage.getItem('graphiql:headers') || '{}');
      } catch (e) {
        return {};
      }
    },
  });
  var root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultEditorToolsVisibility: true,
      defaultQuery: '# Tollgate: try the Docs explorer (top left) and autocompletion (Ctrl-Space).\n{\n  creditTypes {\n    value\n    name\n    amount\n  }\n}\n',
    }),
  );
})();
