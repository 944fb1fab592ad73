package main

import (
	"fmt"
	"io"
	"math"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
)

// progress shows a long operation's steps as they happen: the runtime's
// start phases and an image's layers. On a terminal it draws them live
// (mpb: a line per finished phase, a bar per layer, a spinner while
// waiting); elsewhere it prints one plain line per finished step, so a
// log or a script reads each once.
type progress interface {
	// phase says a phase ended after took; status is set on the last one.
	phase(name string, took time.Duration, status string)
	// layer says how far a layer of image is: done of total bytes
	// (total 0 while unknown).
	layer(image, layer string, done, total int64)
	// stop ends the display; the caller prints its result after it.
	stop()
}

// newProgress draws on w live when live (w is a terminal), else in plain
// lines; what says what is waited for ("starting the runtime").
func newProgress(w io.Writer, live bool, what string) progress {
	if !live {
		return &plainProgress{w: w, layers: map[string]bool{}}
	}
	// The caller has found w to be a terminal: draw whatever mpb makes of it.
	p := mpb.New(mpb.WithOutput(w), mpb.WithAutoRefresh(), mpb.WithWidth(64), mpb.WithRefreshRate(100*time.Millisecond))
	spin := p.New(0, mpb.SpinnerStyle().PositionLeft(),
		mpb.BarPriority(math.MaxInt),
		mpb.BarWidth(1),
		mpb.AppendDecorators(decor.Name(what+" "), decor.Elapsed(decor.ET_STYLE_GO)))
	return &liveProgress{p: p, spin: spin, layers: map[string]*mpb.Bar{}}
}

type plainProgress struct {
	w      io.Writer
	layers map[string]bool // layers reported whole
}

func (p *plainProgress) phase(name string, took time.Duration, status string) {
	if status != "" {
		fmt.Fprintf(p.w, "%s: %s (%s)\n", name, status, took)
		return
	}
	fmt.Fprintf(p.w, "%s: done (%s)\n", name, took)
}

func (p *plainProgress) layer(image, layer string, done, total int64) {
	if total <= 0 || done < total || p.layers[layer] {
		return
	}
	p.layers[layer] = true
	fmt.Fprintf(p.w, "%s: layer %s pulled (%s)\n", image, shortDigest(layer), bytesIEC(total))
}

func (p *plainProgress) stop() {}

type liveProgress struct {
	p      *mpb.Progress
	spin   *mpb.Bar
	layers map[string]*mpb.Bar
}

func (l *liveProgress) phase(name string, took time.Duration, status string) {
	label := "✓ " + name
	if status != "" {
		label += ": " + status
	}
	b := l.p.New(1, mpb.NopStyle(),
		mpb.PrependDecorators(decor.Name(label, decor.WC{C: decor.DindentRight | decor.DextraSpace, W: 24})),
		mpb.AppendDecorators(decor.Name(took.String())))
	b.SetCurrent(1)
}

func (l *liveProgress) layer(image, layer string, done, total int64) {
	b, ok := l.layers[layer]
	if !ok {
		b = l.p.New(max(total, 0), mpb.BarStyle(),
			mpb.PrependDecorators(decor.Name(shortDigest(layer), decor.WC{C: decor.DindentRight | decor.DextraSpace, W: 16})),
			mpb.AppendDecorators(decor.OnComplete(decor.CountersKibiByte("% .1f / % .1f"), "pulled")))
		l.layers[layer] = b
	}
	if total > 0 {
		b.SetTotal(total, false)
	}
	b.SetCurrent(done)
}

func (l *liveProgress) stop() {
	l.spin.Abort(true)
	for _, b := range l.layers {
		// A layer the agent had cached, or whose last report was lost,
		// is not left spinning.
		b.Abort(false)
	}
	l.p.Wait()
}

// shortDigest shortens sha256:abcdef... to its first 12 hex digits, as
// docker shows layers.
func shortDigest(d string) string {
	const n = 12
	for i := range len(d) {
		if d[i] == ':' {
			d = d[i+1:]
			break
		}
	}
	if len(d) > n {
		return d[:n]
	}
	return d
}
