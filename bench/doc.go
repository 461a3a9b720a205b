// Package bench holds the benchmark suite behind `make bench`: one test,
// TestSuite, that drains backlogs next to a raw amqp091-go publisher, reads
// the outbox by position, measures commit-to-delivery latency, the writer's
// cost, the relay binary's memory and the writer library, and prints one
// markdown table of figures and ratios.
//
// TestSuite skips unless -bench.suite is given, so `go test ./...` passes
// over it quickly. It asserts nothing about time: it fails only when what
// it drained is wrong (a missing or duplicated message, messages of one
// aggregate out of order, a statement count other than one). Absolute
// figures depend on the machine and its load; the ratios compare runs of
// the same suite, taken minutes apart, and are what the goals are about.
package bench
