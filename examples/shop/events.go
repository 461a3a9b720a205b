package main

import (
	"context"
	"fmt"
	"maps"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/outbox"
)

// The events are the contract between the services: the only thing they
// share. In a real system this file would be a schema both teams version.

// Events of the orders service, aggregate type "order", aggregate id the
// order id, published by the orders database's relay to the orders exchange.
const (
	OrderCreated   = "OrderCreated"
	ItemAdded      = "ItemAdded"
	OrderPlaced    = "OrderPlaced" // asks inventory to reserve the items
	OrderConfirmed = "OrderConfirmed"
	OrderCancelled = "OrderCancelled"
)

// Replies of the inventory service to OrderPlaced, published by the
// inventory database's relay to the inventory exchange.
const (
	StockReserved = "StockReserved"
	StockShort    = "StockShort"
)

// routingKeys gives each event type its routing key; consumers bind by
// pattern (order.#, stock.#).
var routingKeys = map[string]string{
	OrderCreated:   "order.created",
	ItemAdded:      "order.item-added",
	OrderPlaced:    "order.placed",
	OrderConfirmed: "order.confirmed",
	OrderCancelled: "order.cancelled",
	StockReserved:  "stock.reserved",
	StockShort:     "stock.short",
}

// writeEvent writes an event about order orderID to the outbox on tx, with
// payload as its JSON body and the routing key of its type. Every event of
// the contract is about an order, and so is ordered per order. Its exchange
// is left empty: the relay of tx's database sends it to its RELAY_EXCHANGE.
func writeEvent(ctx context.Context, tx pgx.Tx, eventType string, orderID int64, payload any) error {
	body, err := outbox.JSON(payload)
	if err != nil {
		return err
	}
	return outbox.Write(ctx, tx, outbox.Event{
		AggregateType: "order",
		AggregateID:   strconv.FormatInt(orderID, 10),
		EventType:     eventType,
		RoutingKey:    routingKeys[eventType],
		Payload:       body,
	})
}

// orderEvent is the payload of every order event. Version numbers an
// order's events 1, 2, 3, ...: whoever rebuilds the order from its events
// can tell a missing or reordered one.
type orderEvent struct {
	OrderID int64  `json:"order_id"`
	Version int    `json:"version"`
	SKU     string `json:"sku,omitempty"`    // ItemAdded
	Qty     int    `json:"qty,omitempty"`    // ItemAdded
	Items   []item `json:"items,omitempty"`  // OrderPlaced: what to reserve
	Reason  string `json:"reason,omitempty"` // OrderCancelled
}

// item is a quantity of one product.
type item struct {
	SKU string `json:"sku"`
	Qty int    `json:"qty"`
}

// stockReply is the payload of StockReserved and StockShort.
type stockReply struct {
	OrderID int64  `json:"order_id"`
	Missing []item `json:"missing,omitempty"` // StockShort: what was lacking
}

// Order statuses, the same words in every view of an order.
const (
	statusOpen      = "open"      // being filled by the customer
	statusPlaced    = "placed"    // waiting for inventory's reply
	statusConfirmed = "confirmed" // stock reserved
	statusCancelled = "cancelled" // by the customer, or for want of stock
)

// orderState is an order as one view sees it. The orders tables, the
// inventory's read model and the fold of the published events must all
// produce the same orderState for every order.
type orderState struct {
	Status  string
	Version int
	Items   map[string]int // sku -> quantity
}

func (s orderState) equal(o orderState) bool {
	return s.Status == o.Status && s.Version == o.Version && maps.Equal(s.Items, o.Items)
}

func (s orderState) String() string {
	if s.Version == 0 {
		return "absent"
	}
	return fmt.Sprintf("%s v%d %v", s.Status, s.Version, s.Items)
}

// fold rebuilds an order from its events alone, in the order they arrived:
// event sourcing's definition of state. An event that cannot follow the one
// before (a gap in the versions, an item added to a placed order) is an
// error: events were lost, reordered or invented.
func fold(events []loggedEvent) (orderState, error) {
	s := orderState{Items: map[string]int{}}
	for _, e := range events {
		if e.Event.Version != s.Version+1 {
			return s, fmt.Errorf("%s version %d arrived after version %d", e.Type, e.Event.Version, s.Version)
		}
		before := s.Status
		var allowed bool
		switch e.Type {
		case OrderCreated:
			allowed, s.Status = before == "", statusOpen
		case ItemAdded:
			allowed = before == statusOpen
			s.Items[e.Event.SKU] += e.Event.Qty
		case OrderPlaced:
			allowed, s.Status = before == statusOpen, statusPlaced
		case OrderConfirmed:
			allowed, s.Status = before == statusPlaced, statusConfirmed
		case OrderCancelled: // by the customer, or the saga's compensation
			allowed, s.Status = before == statusOpen || before == statusPlaced, statusCancelled
		default:
			return s, fmt.Errorf("unknown event type %q", e.Type)
		}
		if !allowed {
			return s, fmt.Errorf("%s version %d on an order that was %q", e.Type, e.Event.Version, before)
		}
		s.Version = e.Event.Version
	}
	return s, nil
}
