package protocol

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"time"
)

// Fingerprint identifies "the same body" of DESIGN §3: the same device,
// method, canonical params, timeout and expires_in. A retry with the same
// (client, id) and the same fingerprint is harmless; a different
// fingerprint is a conflict.
func Fingerprint(device, method string, params json.RawMessage, timeout, expiresIn time.Duration) string {
	canon, err := CanonicalJSON(params)
	if err != nil {
		canon = params
	}
	h := sha256.New()
	for _, part := range []string{device, method, string(canon),
		strconv.FormatInt(timeout.Milliseconds(), 10), strconv.FormatInt(expiresIn.Milliseconds(), 10)} {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}
