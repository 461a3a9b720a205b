package relaytest

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"

	"github.com/outboxrelay/outboxrelay/relay"
)

// Answer is what the fake broker does with one message.
type Answer int

const (
	// Confirm takes responsibility for the message.
	Confirm Answer = iota
	// Refuse refuses it alone, as an unroutable message is returned: a
	// retry may help.
	Refuse
	// Invalid refuses it as one that no retry can cure.
	Invalid
	// Doubt closes its channel, as a lost connection does: it and every
	// later message on the channel are left unanswered until Reset, and
	// the core must send them again.
	Doubt
	// Exception closes its channel as a broker does on a message it
	// cannot take (a missing exchange): as Doubt, with an error wrapping
	// relay.ErrRejected.
	Exception
)

// errException is the failure a Confirmation reports after Exception.
var errException = errors.New("relaytest: channel closed by the broker (406 PRECONDITION_FAILED)")

// ErrDoubt is the failure a Confirmation reports for messages in doubt.
var ErrDoubt = errors.New("relaytest: channel closed before the broker answered")

// Publisher is an in-memory relay.Publisher with publisher confirms. By
// default every message is confirmed at once; Decide, Hold and Block change
// that. The zero value is not usable; call NewPublisher.
type Publisher struct {
	watched
	// decide answers each message; nil confirms all.
	decide    func(m *relay.Message) Answer
	may       func() error // checked at every Publish
	calls     []Call
	sent      []relay.Message
	confirmed map[string]int // message id: times confirmed
	order     []relay.Message
	held      []*confirmation // unanswered while holding
	holding   bool
	blocked   bool
	change    chan struct{}
	resets    int
	channels  int
	closed    map[int]error // channels closed until Reset, and why
	inFlight  int           // sent and not yet answered
	most      int           // the most in flight at once
}

// NewPublisher returns a broker that confirms every message.
func NewPublisher() *Publisher {
	return &Publisher{watched: newWatched(), confirmed: map[string]int{}, change: make(chan struct{}),
		channels: 1, closed: map[int]error{}}
}

// Decide sets how each message is answered from now on.
func (p *Publisher) Decide(decide func(m *relay.Message) Answer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.decide = decide
}

// May sets the check every Publish call must pass (for instance, that the
// replica leads); a call that fails it is a violation.
func (p *Publisher) May(check func() error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.may = check
}

// Hold keeps every answer back from now on, until Answer releases them.
func (p *Publisher) Hold() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.holding = true
}

// Release answers every held message and stops holding.
func (p *Publisher) Release() {
	p.mu.Lock()
	held := p.held
	p.held, p.holding = nil, false
	p.mu.Unlock()
	for _, c := range held {
		p.answer(c)
	}
}

// Block starts (true) or ends a resource alarm: a Publish meanwhile is a
// violation.
func (p *Publisher) Block(blocked bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.blocked != blocked {
		p.blocked = blocked
		close(p.change)
		p.change = make(chan struct{})
	}
}

// Publish implements relay.Publisher.
func (p *Publisher) Publish(ctx context.Context, msgs []relay.Message) relay.Confirmation {
	p.mu.Lock()
	may := p.may
	p.mu.Unlock()
	var refused error
	if may != nil {
		refused = may() // outside the lock: it may ask the store
	}
	p.mu.Lock()
	c := &confirmation{msgs: slices.Clone(msgs), done: make(chan struct{})}
	if p.blocked {
		p.problemf("published %d messages while the broker blocks publishers", len(msgs))
	}
	if refused != nil {
		p.problemf("published %d messages: %v", len(msgs), refused)
	}
	call := Call{Size: len(msgs), InFlight: p.inFlight, Resets: p.resets}
	if len(msgs) > 0 {
		call.First = msgs[0].MessageID
	}
	p.calls = append(p.calls, call)
	p.sent = append(p.sent, msgs...)
	p.inFlight += len(msgs)
	p.most = max(p.most, p.inFlight)
	hold := p.holding
	if hold {
		p.held = append(p.held, c)
	}
	p.changedLocked()
	p.mu.Unlock()
	if !hold {
		p.answer(c)
	}
	return c
}

// answer answers every message of c as decided.
func (p *Publisher) answer(c *confirmation) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c.answers = make([]relay.Answer, len(c.msgs))
	for i := range c.msgs {
		m := &c.msgs[i]
		ch := p.channel(m.Aggregate)
		if err := p.closed[ch]; err != nil {
			c.err = err // in doubt: the channel is closed
			continue
		}
		a := Confirm
		if p.decide != nil {
			a = p.decide(m)
		}
		switch a {
		case Confirm:
			c.answers[i].Confirmed = true
			p.confirmed[m.MessageID]++
			p.order = append(p.order, *m)
		case Refuse:
			c.answers[i].Refused = fmt.Errorf("%w: message %s returned: NO_ROUTE", relay.ErrRejected, m.MessageID)
		case Invalid:
			c.answers[i].Refused = fmt.Errorf("%w: %w: message %s", relay.ErrRejected, relay.ErrInvalid, m.MessageID)
		case Doubt:
			p.closed[ch] = ErrDoubt
			c.err = ErrDoubt
		case Exception:
			p.closed[ch] = fmt.Errorf("%w: %w on message %s", relay.ErrRejected, errException, m.MessageID)
			c.err = p.closed[ch]
		}
	}
	p.inFlight -= len(c.msgs)
	close(c.done)
	p.changedLocked()
}

// channel is the channel that carries agg's messages.
func (p *Publisher) channel(agg relay.Aggregate) int {
	h := fnv.New32a()
	h.Write([]byte(agg.Type + "\x00" + agg.ID))
	return int(h.Sum32() % uint32(p.channels))
}

// Channels spreads messages over n channels, each aggregate's on one, as
// the real Publisher does: a channel that closes leaves the others open.
func (p *Publisher) Channels(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.channels = max(n, 1)
}

// Reset implements relay.Publisher: closed channels open again.
func (p *Publisher) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.resets++
	clear(p.closed)
	p.changedLocked()
}

// Connect implements relay.Publisher.
func (p *Publisher) Connect(context.Context) error { return nil }

// Blocked implements relay.Publisher.
func (p *Publisher) Blocked() (bool, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.blocked, p.change
}

// confirmation is the answer to one Publish call.
type confirmation struct {
	msgs    []relay.Message
	done    chan struct{}
	answers []relay.Answer
	err     error
}

func (c *confirmation) Done() <-chan struct{} { return c.done }

func (c *confirmation) Wait(ctx context.Context) ([]relay.Answer, error) {
	select {
	case <-c.done:
		return c.answers, c.err
	case <-ctx.Done():
		return make([]relay.Answer, len(c.msgs)), ctx.Err()
	}
}

// Sent returns every message sent, in order, repeats included.
func (p *Publisher) Sent() []relay.Message {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.sent)
}

// Call is one Publish call.
type Call struct {
	Size     int    // messages sent
	First    string // the first one's message id
	InFlight int    // messages already in flight
	Resets   int    // Reset calls before it
}

// Calls returns every Publish call, in order.
func (p *Publisher) Calls() []Call {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.calls)
}

// Delivered returns the messages the broker confirmed, in the order it
// confirmed them, repeats included.
func (p *Publisher) Delivered() []relay.Message {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.order)
}

// Confirmed reports whether the broker confirmed the message with this id.
func (p *Publisher) Confirmed(messageID string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.confirmed[messageID] > 0
}

// InFlight returns how many messages are sent and not yet answered, and
// the most there ever were at once.
func (p *Publisher) InFlight() (now, most int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.inFlight, p.most
}
