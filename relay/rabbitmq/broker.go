package rabbitmq

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/relay"
)

// Config configures a Broker.
type Config struct {
	// URLs are amqp:// or amqps:// URLs of one cluster, tried in turn.
	URLs []string
	// DialTimeout bounds each connection attempt. Zero means 5 s.
	DialTimeout time.Duration
	// Heartbeat is the AMQP heartbeat interval. Zero means 10 s.
	Heartbeat time.Duration
	// Window is the most messages the caller keeps awaiting confirms; it
	// sizes the buffer of returned messages: relay.Config.Window. Zero
	// means the window of the default batch size.
	Window int
	// Channels is how many confirm-mode channels carry messages; each
	// aggregate always goes over the same one, so its order holds. Zero
	// means 1.
	Channels int
	// Name is shown as the connection name in the management UI.
	Name string
	// Logger receives connection state changes. Nil discards.
	Logger *slog.Logger
}

// ParseURLs splits a comma-separated list and validates each URL.
func ParseURLs(list string) ([]string, error) {
	var urls []string
	for _, u := range strings.Split(list, ",") {
		u = strings.TrimSpace(u)
		if u == "" {
			continue
		}
		if err := checkURL(u); err != nil {
			return nil, err
		}
		urls = append(urls, u)
	}
	if len(urls) == 0 {
		return nil, errors.New("is required")
	}
	return urls, nil
}

// Validate reports the first field that cannot work.
func (c Config) Validate() error {
	if len(c.URLs) == 0 {
		return &relay.ConfigError{Field: "URLs", Problem: "at least one URL is required"}
	}
	for _, u := range c.URLs {
		if err := checkURL(u); err != nil {
			return &relay.ConfigError{Field: "URLs", Problem: err.Error()}
		}
	}
	if c.Window < 0 {
		return &relay.ConfigError{Field: "Window", Problem: "must not be negative"}
	}
	if c.Channels < 0 || c.Channels > maxChannels {
		return &relay.ConfigError{Field: "Channels", Problem: fmt.Sprintf("must be between 1 and %d", maxChannels)}
	}
	if c.DialTimeout < 0 || c.Heartbeat < 0 {
		return &relay.ConfigError{Field: "DialTimeout", Problem: "must not be negative"}
	}
	return nil
}

// checkURL validates an AMQP URL with an error that never repeats its
// password: parse errors quote the URL, so the URL is replaced by its
// redacted form, or the detail dropped when it cannot be redacted.
func checkURL(u string) error {
	if strayAt(u) {
		return errors.New("an entry has an '@' other than the one that ends user:password: " +
			"percent-encode reserved characters in the password (@ as %40, / as %2F, ? as %3F, # as %23, comma as %2C)")
	}
	uri, err := amqp.ParseURI(u)
	if err != nil {
		p, perr := url.Parse(u)
		if perr != nil {
			return errors.New("an entry is not a valid URL (check the port and percent-encode reserved characters in the password)")
		}
		msg := strings.ReplaceAll(err.Error(), u, p.Redacted())
		if pw, ok := p.User.Password(); ok && pw != "" {
			msg = strings.ReplaceAll(msg, pw, "xxxxx")
		}
		return fmt.Errorf("%s: %s", p.Redacted(), msg)
	}
	// The client takes any number, and dialing port 99999 fails only at
	// connect time, over and over.
	if uri.Port < 1 || uri.Port > 65535 {
		return fmt.Errorf("%s: port must be between 1 and 65535, got %d", Redact(u), uri.Port)
	}
	return nil
}

// strayAt reports whether u has an '@' that url.Parse does not take for the
// end of the user information: one after the host (a password with '/',
// '?' or '#' in it ends the host early) or in an entry without a scheme
// (a password with a comma splits the list). Part of the password would
// then be shown as a host, path or fragment.
func strayAt(u string) bool {
	_, rest, ok := strings.Cut(u, "://")
	if !ok {
		return strings.Contains(u, "@")
	}
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		return strings.Contains(rest[i:], "@")
	}
	return false
}

// Redact returns u with its password replaced, for logs.
func Redact(u string) string {
	if strayAt(u) {
		return "(AMQP URL not shown: unencoded '@')"
	}
	p, err := url.Parse(u)
	if err != nil {
		return "(unparsable AMQP URL)"
	}
	return p.Redacted()
}

// maxChannels bounds Config.Channels: beyond a few, channels on one
// connection buy nothing.
const maxChannels = 16

// Broker publishes to RabbitMQ. It implements relay.Publisher. One goroutine
// may call Publish at a time; Close may be called from any goroutine.
type Broker struct {
	cfg  Config
	log  *slog.Logger
	mu   sync.Mutex // guards conn, chs, frameMax, broken, next
	conn *amqp.Connection
	chs  []*channel // Config.Channels of them while connected
	// frameMax is the connection's negotiated frame size: a message's
	// header frame must fit in one.
	frameMax int
	// exchanges are the exchanges known to exist on this connection, and
	// probe the channel that checks others (exchanges.go).
	exchanges map[string]bool
	probe     *amqp.Channel
	// broken is set when the channel carrying messages fails. Nothing is
	// published again until Reset: a later message sent on a new channel
	// would overtake the failed ones, which the core republishes first.
	broken bool
	next   int // index of the URL to try first
	// blocked is set while the broker blocks the connection (a resource
	// alarm); blockChange is closed at its next change.
	blocked     bool
	blockChange chan struct{}
	// storm is the run of calls the broker nacked whole (wholeNacks);
	// lostAt is when the broker last closed or lost a connection (not
	// when the relay dropped it).
	storm  nackStorm
	lostAt time.Time
}

// errAwaitingReset refuses to publish after a failure until Reset.
var errAwaitingReset = errors.New("an earlier message failed on this channel; waiting for the relay to republish from its position")

// channel is a confirm-mode channel with its returned messages.
type channel struct {
	*amqp.Channel
	returns chan amqp.Return

	mu   sync.Mutex
	back map[string]amqp.Return // returned, by message id, not yet claimed

	closes chan *amqp.Error // the broker's reason when it closes the channel
}

// closedError explains why the channel closed under message id. A channel
// exception (403, 404, 405, 406) on a live connection is the broker refusing
// that message, for example for an exchange that does not exist: the row's
// own failure. Anything else is the connection's.
func (c *channel) closedError(b *Broker, id string) error {
	var reason *amqp.Error
	select {
	case reason = <-c.closes:
	default:
	}
	if reason != nil {
		b.mu.Lock()
		connOK := b.conn != nil && !b.conn.IsClosed()
		b.mu.Unlock()
		switch reason.Code {
		case amqp.AccessRefused, amqp.NotFound, amqp.ResourceLocked, amqp.PreconditionFailed:
			if connOK {
				return fmt.Errorf("%w: broker closed the channel at message %s: %d %s", relay.ErrRejected, id, reason.Code, reason.Reason)
			}
		}
		return fmt.Errorf("channel closed before message %s was confirmed: %w", id, reason)
	}
	return fmt.Errorf("channel closed before message %s was confirmed: %w", id, amqp.ErrClosed)
}

func (c *channel) returned(r amqp.Return) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.back[r.MessageId] = r
}

// drainReturns moves queued returns into the map without blocking.
func (c *channel) drainReturns() {
	for {
		select {
		case r, ok := <-c.returns:
			if !ok {
				return
			}
			c.returned(r)
		default:
			return
		}
	}
}

func (c *channel) takeReturn(id string) (amqp.Return, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.back[id]
	delete(c.back, id)
	return r, ok
}

// New returns a Broker. It does not connect yet.
func New(cfg Config) (*Broker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = 10 * time.Second
	}
	if cfg.Window == 0 {
		cfg.Window = relay.Config{BatchSize: relay.DefaultBatchSize}.Window()
	}
	if cfg.Channels == 0 {
		cfg.Channels = 1
	}
	if cfg.Name == "" {
		cfg.Name = "outbox-relay"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Broker{cfg: cfg, log: log, blockChange: make(chan struct{})}, nil
}

// closeTimeout bounds closing a connection. A broker under a resource
// alarm stops reading from publishing connections, so a close that waited
// for the broker's answer could wait until the alarm clears.
const closeTimeout = 2 * time.Second

// Close closes the connection, if any, within closeTimeout.
func (b *Broker) Close() error {
	b.mu.Lock()
	conn := b.detachLocked()
	b.mu.Unlock()
	return closeConn(conn)
}

// detachLocked forgets the connection and its channel and returns the
// connection for the caller to close outside the lock.
func (b *Broker) detachLocked() *amqp.Connection {
	conn := b.conn
	b.conn, b.chs, b.exchanges, b.probe = nil, nil, nil, nil
	b.setBlockedLocked(false) // a new connection starts unblocked
	return conn
}

func closeConn(conn *amqp.Connection) error {
	if conn == nil {
		return nil
	}
	err := conn.CloseDeadline(time.Now().Add(closeTimeout))
	if errors.Is(err, amqp.ErrClosed) {
		return nil
	}
	return err
}

// fail handles a failure on ch: if it is a current channel, its
// connection is closed (whatever else it carries is in doubt) and nothing is
// published until Reset.
func (b *Broker) fail(ch *channel) {
	b.mu.Lock()
	var conn *amqp.Connection
	if slices.Contains(b.chs, ch) {
		b.broken = true
		conn = b.detachLocked()
	}
	b.mu.Unlock()
	_ = closeConn(conn)
}

// channels returns the open confirm-mode channels and the connection's
// frame size, connecting first if needed.
func (b *Broker) channels() ([]*channel, int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	chs, err := b.channelsLocked()
	return chs, b.frameMax, err
}

func (b *Broker) channelsLocked() ([]*channel, error) {
	if b.broken {
		return nil, errAwaitingReset
	}
	if b.chs != nil {
		for _, ch := range b.chs {
			if ch.IsClosed() || b.conn.IsClosed() {
				// It died under messages that may be unanswered.
				b.broken = true
				return nil, fmt.Errorf("broker channel closed: %w", amqp.ErrClosed)
			}
		}
		return b.chs, nil
	}
	if b.conn != nil && !b.conn.IsClosed() {
		chs, err := b.openChannels(b.conn)
		if err == nil {
			b.chs = chs
			return chs, nil
		}
	}
	_ = closeConn(b.detachLocked())
	var errs []error
	for i := range b.cfg.URLs {
		k := (b.next + i) % len(b.cfg.URLs)
		conn, err := b.dial(b.cfg.URLs[k])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", Redact(b.cfg.URLs[k]), err))
			continue
		}
		chs, err := b.openChannels(conn)
		if err != nil {
			_ = conn.Close()
			errs = append(errs, fmt.Errorf("%s: open channel: %w", Redact(b.cfg.URLs[k]), err))
			continue
		}
		b.next = k
		b.conn, b.chs = conn, chs
		b.frameMax = conn.Config.FrameSize
		b.log.Info("connected to broker", "url", Redact(b.cfg.URLs[k]), "channels", len(chs))
		return chs, nil
	}
	b.next = (b.next + 1) % len(b.cfg.URLs)
	return nil, fmt.Errorf("no broker URL answered: %w", errors.Join(errs...))
}

func (b *Broker) dial(u string) (*amqp.Connection, error) {
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(b.cfg.Name)
	conn, err := amqp.DialConfig(u, amqp.Config{
		Heartbeat:  b.cfg.Heartbeat,
		Locale:     "en_US",
		Properties: props,
		Dial:       b.dialTCP,
	})
	if err != nil {
		return nil, err
	}
	// Every Notify channel gets a buffer and a reader that ends when the
	// connection closes, so the client can never block on us.
	blocked := conn.NotifyBlocked(make(chan amqp.Blocking, 4))
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))
	go b.watchBlocked(conn, blocked)
	go func() {
		if err, ok := <-closed; ok && err != nil {
			b.log.Warn("broker connection lost", "err", err)
			b.mu.Lock()
			b.lostAt = time.Now()
			b.mu.Unlock()
		}
	}()
	return conn, nil
}

// dialTCP opens the TCP connection under the AMQP one; TLS, when the URL
// asks for it, is layered on top by the client. Writes are coalesced.
func (b *Broker) dialTCP(network, addr string) (net.Conn, error) {
	conn, err := amqp.DefaultDial(b.cfg.DialTimeout)(network, addr)
	if err != nil {
		return nil, err
	}
	return newCoalescingConn(conn), nil
}

// openChannels opens Config.Channels channels on conn, or none.
func (b *Broker) openChannels(conn *amqp.Connection) ([]*channel, error) {
	chs := make([]*channel, 0, b.cfg.Channels)
	for range b.cfg.Channels {
		ch, err := b.openChannel(conn)
		if err != nil {
			for _, c := range chs {
				_ = c.Close()
			}
			return nil, err
		}
		chs = append(chs, ch)
	}
	return chs, nil
}

func (b *Broker) openChannel(conn *amqp.Connection) (*channel, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("enable confirms: %w", err)
	}
	// Returns are read while confirms are awaited; the buffer covers the
	// relay's largest in-flight window, so the client's reader, which
	// also delivers confirms, never waits on it.
	return &channel{Channel: ch, returns: ch.NotifyReturn(make(chan amqp.Return, b.cfg.Window)), back: map[string]amqp.Return{},
		closes: ch.NotifyClose(make(chan *amqp.Error, 1))}, nil
}
