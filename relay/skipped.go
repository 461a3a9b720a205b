package relay

import (
	"slices"
	"strings"
)

// nameSkipped adds to m, the next message of its aggregate, the header
// naming the rows the aggregate went on without (skipped, from the store,
// and those this replica saw die), and returns their ids. Until m is
// recorded (reported) or comes back unconfirmed (unnamed), the rows are
// pending: later messages of the aggregate do not name them again.
func (p *pipeline) nameSkipped(m *Message, skipped []Skipped) []int64 {
	agg := m.Aggregate
	all := append(slices.Clone(skipped), p.parking.gaps[agg]...)
	if len(all) == 0 {
		return nil
	}
	ids := make([]int64, 0, len(all))
	events := make([]string, 0, len(all))
	for _, s := range all {
		if !slices.Contains(ids, s.ID) && !slices.ContainsFunc(p.parking.naming[agg], func(n Skipped) bool { return n.ID == s.ID }) {
			ids = append(ids, s.ID)
			events = append(events, s.EventID)
			p.parking.naming[agg] = append(p.parking.naming[agg], s)
		}
	}
	delete(p.parking.gaps, agg)
	if len(ids) == 0 {
		return nil
	}
	m.Headers[SkippedHeader] = strings.Join(events, ",")
	return ids
}

// reported forgets the skipped rows of agg that a recorded message named.
func (p *pipeline) reported(agg Aggregate, ids []int64) {
	p.parking.naming[agg] = slices.DeleteFunc(p.parking.naming[agg], func(s Skipped) bool { return slices.Contains(ids, s.ID) })
	if len(p.parking.naming[agg]) == 0 {
		delete(p.parking.naming, agg)
	}
}

// unnamed puts the rows of agg that a message named back among the gaps,
// when the message was not confirmed: the next message names them.
func (p *pipeline) unnamed(agg Aggregate, ids []int64) {
	for _, s := range p.parking.naming[agg] {
		if slices.Contains(ids, s.ID) {
			p.parking.gaps[agg] = append(p.parking.gaps[agg], s)
		}
	}
	p.reported(agg, ids)
}
