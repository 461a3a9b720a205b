package outbox_test

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/outboxrelay/outboxrelay/outbox"
)

func TestJSON(t *testing.T) {
	t.Parallel()
	got, err := outbox.JSON(struct {
		ID   int    `json:"id"`
		Note string `json:"note"`
	}{42, "a < b & c"})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"id":42,"note":"a < b & c"}`; string(got) != want {
		t.Errorf("JSON = %s, want %s", got, want)
	}

	_, err = outbox.JSON(make(chan int))
	var typeErr *json.UnsupportedTypeError
	if !errors.As(err, &typeErr) {
		t.Errorf("JSON(chan) error = %v, want a wrapped *json.UnsupportedTypeError", err)
	}
}
