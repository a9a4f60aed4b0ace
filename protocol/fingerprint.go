package protocol

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"time"
)

// Fingerprint identifies "the same body" of DESIGN §3: the same device,
// method, canonical params, timeout and expires_in, and any other option
// of the request as given (extra: not_before; none for most commands). A
// retry with the same (client, id) and the same fingerprint is harmless;
// a different fingerprint is a conflict.
func Fingerprint(device, method string, params json.RawMessage, timeout, expiresIn time.Duration, extra ...string) string {
	canon, err := CanonicalJSON(params)
	if err != nil {
		canon = params
	}
	h := sha256.New()
	parts := append([]string{device, method, string(canon),
		strconv.FormatInt(timeout.Milliseconds(), 10), strconv.FormatInt(expiresIn.Milliseconds(), 10)}, extra...)
	for _, part := range parts {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}
