package main

import (
	"fmt"
	"io"

	"github.com/outboxrelay/outboxrelay/examples/internal/report"
)

// summary is the outcome of a run: what happened, and every disagreement
// the check found. The lists name one problem per line.
type summary struct {
	Settled bool // the saga finished and every event arrived before the check

	Commands, RolledBack int64 // the customers' commands, committed or refused by a rule

	Orders, Open, Placed, Confirmed int
	CancelledShort                  int // by the saga's compensation
	CancelledCustomer               int

	OrderEvents, Replies int // events committed to the orders and inventory outboxes

	InventoryProcessed, InventoryDuplicates int64 // by inventory's inbox, in this run
	OrdersProcessed, OrdersDuplicates       int64 // by orders' inbox, in this run
	AuditDuplicates                         int   // extra copies the audit received

	ReservedUnits, ReservationUnits int // stock.reserved summed; reservations summed
	DeadLettered                    int // messages an inbox gave up on

	Lost          []string // committed, never processed by a consumer that should have
	Unexpected    []string // received, never committed
	OutOfOrder    []string // orders whose events do not fold
	Disagreements []string // orders the three views see differently
	Saga          []string // saga or stock books that do not add up
}

// OK reports whether every check passed.
func (s summary) OK() bool {
	return s.Settled && s.DeadLettered == 0 && len(s.Lost)+len(s.Unexpected)+len(s.OutOfOrder)+len(s.Disagreements)+len(s.Saga) == 0
}

// DuplicatesAbsorbed is how many copies both inboxes acked without running
// their handler.
func (s summary) DuplicatesAbsorbed() int64 { return s.InventoryDuplicates + s.OrdersDuplicates }

// print writes the summary table, then up to five examples of each problem.
func (s summary) print(w io.Writer) {
	t := report.Table{W: w, NameWidth: 19}
	fmt.Fprintln(w, "======================== shop: consistency check ========================")
	t.Line("orders", s.Orders, "created: %d open, %d confirmed, %d cancelled (%d out of stock, %d by the customer), %d awaiting stock",
		s.Open, s.Confirmed, s.CancelledShort+s.CancelledCustomer, s.CancelledShort, s.CancelledCustomer, s.Placed)
	t.Line("commands", s.Commands, "committed by the orders service; %d more refused by a business rule and rolled back, events included", s.RolledBack)
	t.Line("events", s.OrderEvents+s.Replies, "published: %d order events by the orders relay, %d replies by the inventory relay", s.OrderEvents, s.Replies)
	t.Line("duplicates absorbed", s.DuplicatesAbsorbed(), "copies acked without effect: %d by inventory's inbox, %d by orders' inbox (the audit got %d)",
		s.InventoryDuplicates, s.OrdersDuplicates, s.AuditDuplicates)
	t.Line("lost", len(s.Lost), "events committed to an outbox that a consumer never processed")
	t.Line("unexpected", len(s.Unexpected), "messages received that no outbox committed (rolled-back events included)")
	t.Line("out of order", len(s.OutOfOrder), "orders whose events do not fold (a gap, a repeat, an impossible step)")
	t.Line("disagreements", len(s.Disagreements), "orders whose state differs: orders tables, inventory's view, events folded")
	t.Line("saga and stock", len(s.Saga), "units reserved %d, in reservations of confirmed orders %d; orders awaiting stock %d",
		s.ReservedUnits, s.ReservationUnits, s.Placed)
	t.Line("dead-lettered", s.DeadLettered, "messages an inbox gave up on")
	t.Examples("lost", s.Lost)
	t.Examples("unexpected", s.Unexpected)
	t.Examples("out of order", s.OutOfOrder)
	t.Examples("disagreements", s.Disagreements)
	t.Examples("saga and stock", s.Saga)
	switch {
	case s.OK():
		fmt.Fprintf(w, "  RESULT: OK - the orders tables, inventory's view and the events agree on all %d orders\n", s.Orders)
	case !s.Settled:
		fmt.Fprintln(w, "  RESULT: FAILED - the system did not settle in time (see above)")
	default:
		fmt.Fprintln(w, "  RESULT: FAILED")
	}
}
