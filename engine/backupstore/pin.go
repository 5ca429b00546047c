package backupstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// A pin is a lease on one backup, written by a reader that still needs it
// (a DR standby about to apply it, in another cluster): Delete refuses a
// backup with a live pin, so neither the source's retention nor its GC
// removes the backup or its blocks meanwhile. A pin expires on its own, so
// a reader that disappears (a DR site lost with its cluster) stops
// holding the source's backups once its last pin runs out.
//
// Pins are the one thing a store opened read-only writes: a DR site reads
// the primary's target read-only and pins what it restores.

// PinInfo is the JSON content of a pin object.
type PinInfo struct {
	FormatVersion int       `json:"formatVersion"`
	Volume        string    `json:"volume"`
	Backup        string    `json:"backup"`
	Holder        string    `json:"holder"`
	Expires       time.Time `json:"expires"`
}

func pinPrefix(volume string) string { return "pins/" + volume + "/" }

func pinKey(volume, backup, holder string) string {
	return pinPrefix(volume) + backup + "/" + holder + ".json"
}

// Pin writes or renews holder's pin on a backup for ttl.
func (s *Store) Pin(ctx context.Context, volume, backup, holder string, ttl time.Duration) error {
	for what, v := range map[string]string{"volume": volume, "backup": backup, "holder": holder} {
		if err := validName(what, v); err != nil {
			return err
		}
	}
	b, err := json.MarshalIndent(PinInfo{FormatVersion: FormatVersion, Volume: volume, Backup: backup, Holder: holder,
		Expires: time.Now().UTC().Add(ttl)}, "", "  ")
	if err != nil {
		return err
	}
	return s.t.Put(ctx, pinKey(volume, backup, holder), b)
}

// Unpin removes holder's pin on a backup (a missing pin is fine).
func (s *Store) Unpin(ctx context.Context, volume, backup, holder string) error {
	return s.t.Delete(ctx, pinKey(volume, backup, holder))
}

// Pins lists the live pins on a volume's backups; expired ones are left
// out (and removed when the store is writable).
func (s *Store) Pins(ctx context.Context, volume string) ([]PinInfo, error) {
	var out []PinInfo
	now := s.opts.ExpiryClock()
	err := s.t.List(ctx, pinPrefix(volume), func(o ObjectInfo) error {
		if !strings.HasSuffix(o.Key, ".json") {
			return nil
		}
		b, err := getInto(ctx, s.t, o.Key, nil, maxSmallObject)
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrObjectTooLarge) {
			return nil
		}
		if err != nil {
			return err
		}
		var p PinInfo
		if json.Unmarshal(b, &p) != nil || p.FormatVersion != FormatVersion || p.Volume != volume {
			return nil
		}
		if now.After(p.Expires.Add(s.opts.LockClockSkew)) {
			if !s.opts.ReadOnly {
				_ = s.t.Delete(ctx, o.Key)
			}
			return nil
		}
		out = append(out, p)
		return nil
	})
	return out, err
}

// checkUnpinned fails with ErrPinned when a live pin holds the backup.
func (s *Store) checkUnpinned(ctx context.Context, volume, backup string) error {
	pins, err := s.Pins(ctx, volume)
	if err != nil {
		return fmt.Errorf("read pins of %s: %w", volume, err)
	}
	for _, p := range pins {
		if p.Backup == backup {
			return fmt.Errorf("%w: %s/%s by %s until %s", ErrPinned, volume, backup, p.Holder, p.Expires.Format(time.RFC3339))
		}
	}
	return nil
}
