package main

import (
	"net"
	"sync"
)

// heldListeners keeps the control listeners that are bound before the
// server that answers on them is built. A bound listener already takes
// connections (the kernel queues them), so a host may connect as soon as
// it is bound; its requests wait in the queue, none refused, until serve
// hands the listeners over. When the agent cannot serve after all, drop
// closes them. A listener bound later (a vsock bind retried in the
// background) goes straight to its server once the listeners are handed
// over, and is closed once they are dropped.
type heldListeners struct {
	mu      sync.Mutex
	serving bool // handed over: bound listeners are served at once
	dropped bool // the agent will not serve: bound listeners are closed
	held    []heldListener
}

type heldListener struct {
	ln    net.Listener
	serve func(net.Listener)
}

// hold returns the func a listener is given to once bound
// (httpapi.Listeners.Bind's serve): it keeps the listener for serve,
// until handOver.
func (h *heldListeners) hold(serve func(net.Listener)) func(net.Listener) {
	return func(ln net.Listener) {
		h.mu.Lock()
		switch {
		case h.dropped:
			h.mu.Unlock()
			_ = ln.Close()
			return
		case !h.serving:
			h.held = append(h.held, heldListener{ln: ln, serve: serve})
			h.mu.Unlock()
			return
		}
		h.mu.Unlock()
		serve(ln)
	}
}

// handOver serves the listeners held so far, in the order they were
// bound, and from now on each as it is bound.
func (h *heldListeners) handOver() {
	h.mu.Lock()
	if h.dropped || h.serving {
		h.mu.Unlock()
		return
	}
	h.serving = true
	held := h.held
	h.held = nil
	h.mu.Unlock()
	for _, l := range held {
		l.serve(l.ln)
	}
}

// drop closes the listeners still held, and those bound from now on,
// unless they were handed over: then their server closes them.
func (h *heldListeners) drop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.serving || h.dropped {
		return
	}
	h.dropped = true
	for _, l := range h.held {
		_ = l.ln.Close()
	}
	h.held = nil
}
