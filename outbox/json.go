package outbox

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// JSON encodes v as a JSON payload for [Event.Payload]. Unlike json.Marshal
// it leaves <, > and & unescaped, since the payload is published byte for
// byte and read by programs, not embedded in HTML.
func JSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("outbox: encode payload: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
