// graphql-js as codegen tools, Apollo and GraphiQL use it: the standard introspection query
// (getIntrospectionQuery with every option on) against <server>/graphql, then
// buildClientSchema on the answer. Prints the schema's root fields as JSON.
//
// usage: node introspect.mjs <server url>
import { buildClientSchema, getIntrospectionQuery } from 'graphql';

const [server] = process.argv.slice(2);
const query = getIntrospectionQuery({
  descriptions: true,
  specifiedByUrl: true,
  directiveIsRepeatable: true,
  schemaDescription: true,
  inputValueDeprecation: true,
  oneOf: true,
});
const response = await fetch(`${server}/graphql`, {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify({ query, operationName: 'IntrospectionQuery' }),
});
const body = await response.json();
if (body.errors) {
  console.error(JSON.stringify(body.errors));
  process.exit(1);
}
const schema = buildClientSchema(body.data);
console.log(JSON.stringify({
  query: Object.keys(schema.getQueryType().getFields()),
  mutation: Object.keys(schema.getMutationType().getFields()),
}));
