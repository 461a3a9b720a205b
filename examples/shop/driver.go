package main

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"time"
)

// driver plays the shop's customers: it sends the orders service a steady
// stream of commands, as a web front end would. It remembers only what a
// front end would, to pick plausible next commands; the orders database is
// the truth.
type driver struct {
	orders *ordersService
	rate   int // commands per second

	open  []int64       // open orders, to pick from
	units map[int64]int // units in each open order, as far as the driver knows

	committed, rolledBack atomic.Int64
}

// products are what customers order; inventory stocks the same SKUs.
var products = []string{"kettle", "mug", "spoon", "teapot", "tray"}

// keepOpen is how many orders customers fill at the same time.
const keepOpen = 12

func newDriver(orders *ordersService, rate int) *driver {
	return &driver{orders: orders, rate: rate, units: map[int64]int{}}
}

// run sends rate commands per second until ctx ends. A command refused by a
// business rule was rolled back and is counted; any other error stops it.
func (d *driver) run(ctx context.Context) error {
	return every(ctx, time.Second/time.Duration(d.rate), func() error {
		// A command that has started finishes: cancelling its COMMIT
		// would leave the outcome unknown.
		err := d.step(context.WithoutCancel(ctx))
		switch {
		case err == nil:
			d.committed.Add(1)
		case errors.Is(err, errRule):
			d.rolledBack.Add(1)
		default:
			return err
		}
		return nil
	})
}

// step sends one command: open an order, add an item, place or cancel one.
func (d *driver) step(ctx context.Context) error {
	if len(d.open) < keepOpen || rand.IntN(10) == 0 {
		id, err := d.orders.CreateOrder(ctx)
		if err == nil {
			d.open = append(d.open, id)
			d.units[id] = 0
		}
		return err
	}
	id := d.open[rand.IntN(len(d.open))]
	switch r := rand.IntN(100); {
	case r < 1:
		err := d.orders.Cancel(ctx, id)
		if err == nil {
			d.forget(id)
		}
		return err
	case r < 31 && d.units[id] > 0, d.units[id] >= maxUnits:
		// Orders of one unit are refused: a business error on purpose.
		err := d.orders.Place(ctx, id)
		if err == nil {
			d.forget(id)
		}
		return err
	default:
		// Near the limit this is refused too.
		qty := 1 + rand.IntN(3)
		err := d.orders.AddItem(ctx, id, products[rand.IntN(len(products))], qty)
		if err == nil {
			d.units[id] += qty
		}
		return err
	}
}

// forget drops an order that is no longer open.
func (d *driver) forget(id int64) {
	d.open = slices.DeleteFunc(d.open, func(o int64) bool { return o == id })
	delete(d.units, id)
}
