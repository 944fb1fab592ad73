// Package api is generated from openapi.yaml: the types of the agent's
// HTTP/JSON contract, the chi server interface the agent implements, and a
// client for host programs. Run `make generate` after changing the spec.
//
// The client's *WithResponse methods read a whole answer into one value,
// which a stream is not: an NDJSON run would be decoded as one Error, an
// event stream never ends. So client.cfg.yaml replaces oapi-codegen's
// client-with-responses.tmpl with templates/client-with-responses.tmpl,
// the same template with one test: an operation that answers a stream (a
// 101 upgrade, a streaming content type such as application/x-ndjson or
// text/event-stream, or the operation extension x-arcbox-stream: true)
// gets no *WithResponse method, response type or Parse function, unless
// it is marked x-arcbox-stream-by-accept: true (ensureRuntime): it
// streams only when the request's Accept asks, so the wrapper, which
// sends no Accept, reads its one JSON answer. Its request builder and
// plain Client method (which returns the *http.Response) stay. Package
// client (the Go SDK) reads the streams as iterators. getRuntimeLogs is
// marked x-arcbox-stream: with follow=true its answer never ends, and a
// wrapper that is right for one query and hangs for another is no
// wrapper; the SDK's RuntimeLogs reads it either way. The test keys on
// the spec rather than a list of operation ids, so a new stream cannot
// get a wrapper that hangs. The template is v2.8.2's: when oapi-codegen
// is upgraded, copy its new one and add the test again.
//
// server.cfg.yaml likewise replaces chi/chi-handler.tmpl with
// templates/chi-handler.tmpl, v2.8.2's with StreamRoutes added: the
// routes it registers whose answer may be a stream (a 101, or a 200
// media type with x-item-schema), written by the loop that registers
// them, so package httpapi creates their stream series at zero when the
// router is built rather than on each route's first stream.
//
// GET /openapi.yaml's answer has no schema, so GetOpenAPIReply carries
// the document as its Body, the text, and this package imports no YAML
// decoder: oapi-codegen decodes any application/yaml answer that has a
// schema, even a binary one, and the agent, which links this package for
// the server interface, would carry the decoder and run its init.
package api

//go:generate go tool oapi-codegen -config server.cfg.yaml ../openapi.yaml
//go:generate go tool oapi-codegen -config client.cfg.yaml ../openapi.yaml
