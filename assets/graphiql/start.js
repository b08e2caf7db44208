// Tollgate's GraphiQL: everything it loads comes from this server (see the page's
// Content-Security-Policy). Queries go to /graphql on the same origin.
(function () {
  var fetcher = GraphiQL.createFetcher({ url: '/graphql' });
  var root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultEditorToolsVisibility: true,
      defaultQuery: '# Tollgate: try the Docs explorer (top left) and autocompletion (Ctrl-Space).\n{\n  creditTypes {\n    value\n    name\n    amount\n  }\n}\n',
    }),
  );
})();
