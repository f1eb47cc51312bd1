//! The host's `WebSocket` (browsers; Node ≥ 22, or Node 20 with `--experimental-websocket`)
//! behind a small owner: its handlers are Rust closures, and dropping it detaches them before
//! closing, so no event reaches a closure that is gone.

use std::rc::Rc;

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{CloseEvent, Event, MessageEvent, WebSocket};

/// What the socket reports.
pub(super) enum SocketEvent {
    Open,
    Text(String),
    /// Closed or never opened, with a description for `Reconnecting` events.
    Closed(String),
}

pub(super) struct Socket {
    ws: WebSocket,
    _on_open: Closure<dyn FnMut(Event)>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
    _on_error: Closure<dyn FnMut(Event)>,
}

/// True when the host has a global `WebSocket` constructor.
pub(super) fn available() -> bool {
    js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("WebSocket")).is_ok_and(|w| w.is_function())
}

impl Socket {
    /// Starts opening `url`; `on_event` hears the outcome and every frame. An `error` counts as
    /// the end of the socket: browsers follow it with `close`, but Node's WebSocket does not
    /// after a refused handshake. The owner drops the socket at the first `Closed`, so the other
    /// event is never heard.
    pub(super) fn open(url: &str, on_event: impl Fn(SocketEvent) + 'static) -> Result<Socket, String> {
        if !available() {
            return Err("this JavaScript runtime has no global WebSocket (Node.js 20 needs \
                        --experimental-websocket; Node.js 22 and browsers have it)"
                .into());
        }
        let ws = WebSocket::new(url).map_err(|e| describe_js(&e))?;
        let handler = Rc::new(on_event);
        let h = handler.clone();
        let on_open = Closure::<dyn FnMut(Event)>::new(move |_: Event| h(SocketEvent::Open));
        let h = handler.clone();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
            // The server sends text frames only.
            if let Some(text) = e.data().as_string() {
                h(SocketEvent::Text(text));
            }
        });
        let h = handler.clone();
        let on_error = Closure::<dyn FnMut(Event)>::new(move |_: Event| {
            h(SocketEvent::Closed("connection failed or refused".into()));
        });
        let h = handler;
        let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |e: CloseEvent| {
            let reason = match (e.code(), e.reason()) {
                (1006, _) => "connection lost or refused (1006)".to_owned(),
                (code, r) if r.is_empty() => format!("closed by the server ({code})"),
                (code, r) => format!("closed by the server ({code}: {r})"),
            };
            h(SocketEvent::Closed(reason));
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        ws.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        Ok(Socket { ws, _on_open: on_open, _on_message: on_message, _on_close: on_close, _on_error: on_error })
    }

    pub(super) fn send(&self, text: &str) -> Result<(), String> {
        self.ws.send_with_str(text).map_err(|e| describe_js(&e))
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        self.ws.set_onerror(None);
        let _ = self.ws.close_with_code(1000);
    }
}

/// A JavaScript exception's message.
pub(super) fn describe_js(e: &JsValue) -> String {
    e.dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"))
}
