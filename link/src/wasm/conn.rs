//! One WebSocket carrying any number of subscriptions, each driven by its own
//! [`Resumer`](crate::resume::Resumer): the same reconnect-and-resume state machine the native
//! driver uses. The connection reconnects with the machines' back-off while the application
//! wants it (from `connect` until `disconnect`) and every subscription resumes after the last
//! change it delivered.
//!
//! JavaScript is single-threaded: socket events and timers run one at a time. The state is
//! borrowed only while the machines run; application callbacks are called after the borrow
//! ends, so a callback may subscribe, unsubscribe or disconnect.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::{Rc, Weak};
use std::time::Duration;

use futures::channel::oneshot;
use js_sys::Function;
use wasm_bindgen::{JsCast, JsValue};

use super::socket::{Socket, SocketEvent};
use crate::js_json;
use crate::protocol::{ServerMessage, subscribe_message_for};
use crate::resume::{Output, ReconnectPolicy, Resumer};
use crate::wire::SubscriptionOptions;

/// Attempts `connect` makes before it reports a failure.
const FIRST_CONNECT_ATTEMPTS: u32 = 8;

struct Sub {
    machine: Resumer,
    callback: Function,
    /// Cleared when the application ends the subscription, so events already queued for its
    /// callback are not delivered.
    alive: Alive,
}

struct State {
    url: String,
    policy: ReconnectPolicy,
    /// How long a subscribe waits for its ack before the connection is given up.
    ack_timeout: Duration,
    socket: Option<Socket>,
    open: bool,
    /// Bumped for every socket, so events and timers of an old one are ignored.
    generation: u64,
    /// Between `connect` and `disconnect`: lost connections are reopened.
    wanted: bool,
    /// A connection was open at least once since `connect`.
    established: bool,
    /// Consecutive failed connection attempts.
    failures: u32,
    /// `connect` calls waiting for the socket to open.
    waiters: Vec<oneshot::Sender<Result<(), String>>>,
    subs: Vec<Sub>,
    on_status: Option<Function>,
    /// One per pending timer (reconnect, ack deadline); dropping them cancels the timers.
    timers: Vec<oneshot::Sender<()>>,
    /// Ids unsubscribed on the current socket whose `unsubscribed` reply has not come yet: the
    /// reply belongs to the old subscription, not to a new one with the same id.
    closing: HashSet<String>,
}

impl State {
    fn sub_mut(&mut self, id: &str) -> Option<&mut Sub> {
        self.subs.iter_mut().find(|s| s.machine.subscription_id() == id)
    }

    fn ids(&self) -> Vec<String> {
        self.subs.iter().map(|s| s.machine.subscription_id().to_owned()).collect()
    }

    /// Sends a frame on the open socket.
    fn send(&self, frame: &str) -> Result<(), String> {
        match self.socket.as_ref().filter(|_| self.open) {
            Some(s) => s.send(frame),
            None => Err("not connected".into()),
        }
    }
}

/// Calls to make once the state is no longer borrowed. A call for a subscription is skipped
/// when the application ended it meanwhile (from an earlier callback of the same batch).
#[derive(Default)]
struct Calls(Vec<(Function, JsValue, Option<Alive>)>);

/// A subscription's "still wanted by the application" flag.
type Alive = Rc<Cell<bool>>;

impl Calls {
    fn push(&mut self, f: &Function, arg: JsValue) {
        self.0.push((f.clone(), arg, None));
    }

    fn push_for(&mut self, sub: &Sub, arg: JsValue) {
        self.0.push((sub.callback.clone(), arg, Some(sub.alive.clone())));
    }

    fn run(self) {
        for (f, arg, alive) in self.0 {
            if alive.is_some_and(|a| !a.get()) {
                continue;
            }
            if let Err(e) = f.call1(&JsValue::NULL, &arg) {
                // An application callback threw: report it, keep the connection.
                web_log(&format!("kalam-link: a subscription callback threw: {}", super::socket::describe_js(&e)));
            }
        }
    }
}

fn web_log(text: &str) {
    let console = js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("console")).ok();
    let error = console.as_ref().and_then(|c| js_sys::Reflect::get(c, &JsValue::from_str("error")).ok());
    if let (Some(c), Some(f)) = (console, error.and_then(|f| f.dyn_into::<Function>().ok())) {
        let _ = f.call1(&c, &JsValue::from_str(text));
    }
}

#[derive(Clone)]
pub(super) struct Connection(Rc<RefCell<State>>);

impl Connection {
    pub(super) fn new(url: String, policy: ReconnectPolicy, ack_timeout: Duration) -> Self {
        Self(Rc::new(RefCell::new(State {
            url,
            policy,
            ack_timeout,
            socket: None,
            open: false,
            generation: 0,
            wanted: false,
            established: false,
            failures: 0,
            waiters: Vec::new(),
            subs: Vec::new(),
            on_status: None,
            timers: Vec::new(),
            closing: HashSet::new(),
        })))
    }

    pub(super) fn is_open(&self) -> bool {
        self.0.borrow().open
    }

    pub(super) fn set_on_status(&self, f: Option<Function>) {
        self.0.borrow_mut().on_status = f;
    }

    /// Opens the connection (or waits for the one being opened) and resolves once it is open.
    /// A connection refused `FIRST_CONNECT_ATTEMPTS` times in a row is an error.
    pub(super) async fn connect(&self) -> Result<(), String> {
        let rx = {
            let mut st = self.0.borrow_mut();
            if st.open {
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.push(tx);
            if !st.wanted {
                st.wanted = true;
                st.established = false;
                st.failures = 0;
            }
            rx
        };
        let needs_socket = self.0.borrow().socket.is_none();
        if needs_socket {
            let generation = self.0.borrow().generation;
            self.open_socket(generation);
        }
        rx.await.unwrap_or_else(|_| Err("disconnected before the connection opened".into()))
    }

    /// Ends every subscription (unsubscribing on an open socket) and closes the connection.
    /// Their callbacks are dropped; nothing more is delivered.
    pub(super) fn disconnect(&self) {
        let status = {
            let mut st = self.0.borrow_mut();
            st.wanted = false;
            let mut subs = std::mem::take(&mut st.subs);
            for sub in &mut subs {
                sub.alive.set(false);
                for out in sub.machine.close() {
                    if let Output::Send(frame) = out {
                        let _ = st.send(&frame);
                    }
                }
            }
            for w in st.waiters.drain(..) {
                let _ = w.send(Err("disconnect() was called".into()));
            }
            let was_open = std::mem::replace(&mut st.open, false);
            st.socket = None;
            st.generation += 1;
            st.timers.clear();
            st.closing.clear();
            st.on_status.clone().filter(|_| was_open)
        };
        if let Some(f) = status {
            let mut calls = Calls::default();
            calls.push(&f, JsValue::FALSE);
            calls.run();
        }
    }

    /// Adds a subscription; it is sent now when the socket is open, or when it next opens.
    pub(super) fn subscribe(
        &self,
        id: String,
        sql: String,
        options: Option<SubscriptionOptions>,
        callback: Function,
    ) -> Result<(), (&'static str, String)> {
        let mut calls = Calls::default();
        {
            let mut st = self.0.borrow_mut();
            if !st.wanted {
                return Err(("NOT_CONNECTED", "Not connected to server. Call connect() first.".into()));
            }
            if st.sub_mut(&id).is_some() {
                return Err(("DUPLICATE_SUBSCRIPTION_ID", format!("a subscription with id '{id}' is already active")));
            }
            let policy = st.policy;
            let machine = Resumer::new(id.clone(), sql, options, policy);
            st.subs.push(Sub { machine, callback, alive: Rc::new(Cell::new(true)) });
            if st.open {
                let outs = st.subs.last_mut().map(|s| s.machine.on_open()).unwrap_or_default();
                self.apply(&mut st, &id, outs, &mut calls);
            }
        }
        calls.run();
        Ok(())
    }

    /// Ends one subscription; its callback hears nothing more. Unknown ids are ignored.
    pub(super) fn unsubscribe(&self, id: &str) {
        let mut st = self.0.borrow_mut();
        if let Some(i) = st.subs.iter().position(|s| s.machine.subscription_id() == id) {
            let mut sub = st.subs.remove(i);
            sub.alive.set(false);
            for out in sub.machine.close() {
                if let Output::Send(frame) = out
                    && st.send(&frame).is_ok()
                {
                    st.closing.insert(id.to_owned());
                }
            }
        }
    }

    fn open_socket(&self, generation: u64) {
        let weak: Weak<RefCell<State>> = Rc::downgrade(&self.0);
        let url = {
            let mut st = self.0.borrow_mut();
            if !st.wanted || st.socket.is_some() || st.generation != generation {
                return;
            }
            st.generation += 1;
            st.url.clone()
        };
        let generation = generation + 1;
        let handler = move |event: SocketEvent| {
            if let Some(rc) = weak.upgrade() {
                Connection(rc).on_socket(generation, event);
            }
        };
        match Socket::open(&url, handler) {
            Ok(socket) => self.0.borrow_mut().socket = Some(socket),
            Err(reason) => {
                // Could not even start (no WebSocket in this runtime, a bad URL).
                let mut st = self.0.borrow_mut();
                st.wanted = false;
                for w in st.waiters.drain(..) {
                    let _ = w.send(Err(reason.clone()));
                }
            }
        }
    }

    fn on_socket(&self, generation: u64, event: SocketEvent) {
        let mut calls = Calls::default();
        {
            let mut st = self.0.borrow_mut();
            if st.generation != generation || st.socket.is_none() {
                return;
            }
            match event {
                SocketEvent::Open => self.on_open(&mut st, &mut calls),
                SocketEvent::Text(text) => self.on_text(&mut st, &text, &mut calls),
                SocketEvent::Closed(reason) => self.on_closed(&mut st, &reason, &mut calls),
            }
        }
        calls.run();
    }

    fn on_open(&self, st: &mut State, calls: &mut Calls) {
        st.open = true;
        st.established = true;
        st.failures = 0;
        for w in st.waiters.drain(..) {
            let _ = w.send(Ok(()));
        }
        if let Some(f) = &st.on_status {
            calls.push(f, JsValue::TRUE);
        }
        // Every subscription (re)subscribes in one message: the server limits client messages
        // per second per connection, and a reconnect with many subscriptions would exceed it.
        let entries: Vec<_> = st.subs.iter_mut().filter_map(|s| s.machine.open_entry()).collect();
        if entries.is_empty() {
            return;
        }
        match st.send(&subscribe_message_for(entries)) {
            Ok(()) => {
                for id in st.ids() {
                    self.watch_ack(st, &id);
                }
            }
            Err(e) => self.on_closed(st, &format!("send failed: {e}"), calls),
        }
    }

    fn on_text(&self, st: &mut State, text: &str, calls: &mut Calls) {
        let Ok(message) = ServerMessage::parse(text) else {
            web_log(&format!("kalam-link: ignored a frame that is not JSON: {text}"));
            return;
        };
        let targets = match message.subscription_id() {
            Some("*") | None => st.ids(),
            Some(id) => vec![id.to_owned()],
        };
        if matches!(message, ServerMessage::Pong) {
            return;
        }
        let reply_to_unsubscribe = match &message {
            ServerMessage::Unsubscribed { subscription_id, .. } => Some(subscription_id),
            ServerMessage::Error { subscription_id, code, .. } if code == "SUBSCRIPTION_NOT_FOUND" => {
                Some(subscription_id)
            }
            _ => None,
        };
        if let Some(id) = reply_to_unsubscribe
            && st.closing.remove(id.as_str())
        {
            return;
        }
        for id in targets {
            let Some(outs) = st.sub_mut(&id).map(|s| s.machine.on_message(message.clone())) else { continue };
            self.apply(st, &id, outs, calls);
        }
    }

    fn on_closed(&self, st: &mut State, reason: &str, calls: &mut Calls) {
        let was_open = std::mem::replace(&mut st.open, false);
        st.socket = None;
        st.generation += 1;
        // The server forgets a connection's subscriptions with it.
        st.closing.clear();
        if was_open && let Some(f) = &st.on_status {
            calls.push(f, JsValue::FALSE);
        }
        if !st.wanted {
            return;
        }
        if !st.established && st.failures + 1 < FIRST_CONNECT_ATTEMPTS {
            // A refused first attempt is tried again at once a few times: Node's WebSocket may
            // have sent it on a kept-alive fetch connection, which the server closes.
            st.failures += 1;
            let generation = st.generation;
            self.after(st, Duration::from_millis(20), move |conn| conn.open_socket(generation));
            return;
        }
        if !st.established {
            // `connect` failed: tell the caller (who decides whether to try again), and end the
            // subscriptions that were waiting for it.
            st.wanted = false;
            for w in st.waiters.drain(..) {
                let _ = w.send(Err(reason.to_owned()));
            }
            for sub in std::mem::take(&mut st.subs) {
                let id = sub.machine.subscription_id();
                calls.push_for(&sub, JsValue::from_str(&js_json::client_error(id, "NOT_CONNECTED", reason)));
            }
            return;
        }
        // A `connect` made during an outage hears about this attempt; reconnecting goes on.
        for w in st.waiters.drain(..) {
            let _ = w.send(Err(reason.to_owned()));
        }
        st.failures += 1;
        let mut delay = st.policy.delay(st.failures);
        for id in st.ids() {
            let Some(outs) = st.sub_mut(&id).map(|s| s.machine.on_closed(reason)) else { continue };
            for out in &outs {
                // The machines' back-off grows while sockets open but subscriptions fail.
                if let Output::ReconnectAfter(d) = out {
                    delay = delay.max(*d);
                }
            }
            self.apply(st, &id, outs, calls);
        }
        let generation = st.generation;
        self.after(st, delay, move |conn| conn.open_socket(generation));
    }

    /// Runs `f` after `delay` unless `disconnect` comes first.
    fn after(&self, st: &mut State, delay: Duration, f: impl FnOnce(Connection) + 'static) {
        let (tx, rx) = oneshot::channel::<()>();
        st.timers.retain(|t| !t.is_canceled());
        st.timers.push(tx);
        let this = Rc::downgrade(&self.0);
        wasm_bindgen_futures::spawn_local(async move {
            let timer = std::pin::pin!(crate::rt::sleep(delay));
            // The sender is only ever dropped (by `disconnect`), never used.
            if let futures::future::Either::Left(_) = futures::future::select(timer, rx).await
                && let Some(rc) = this.upgrade()
            {
                f(Connection(rc));
            }
        });
    }

    /// Carries out what subscription `id`'s machine answered.
    fn apply(&self, st: &mut State, id: &str, outs: Vec<Output>, calls: &mut Calls) {
        let mut drop_reason = None;
        let mut finished = false;
        let mut sent_any = false;
        for out in outs {
            match out {
                Output::Send(frame) => match st.send(&frame) {
                    Ok(()) => sent_any = true,
                    Err(e) => {
                        drop_reason.get_or_insert(format!("send failed: {e}"));
                    }
                },
                Output::Event(e) => {
                    if let Some(s) = st.sub_mut(id) {
                        calls.push_for(s, JsValue::from_str(&js_json::event(&e)));
                    }
                }
                Output::Disconnect(reason) => {
                    drop_reason.get_or_insert(reason);
                }
                // The connection schedules its own reconnect (see `on_closed`).
                Output::ReconnectAfter(_) => {}
                Output::Fail(message) => {
                    if let Some(s) = st.sub_mut(id) {
                        let text = js_json::client_error(id, "RECONNECT_FAILED", &message);
                        calls.push_for(s, JsValue::from_str(&text));
                    }
                }
                Output::Finish => finished = true,
            }
        }
        if finished {
            st.subs.retain(|s| s.machine.subscription_id() != id);
        } else if sent_any && st.sub_mut(id).is_some_and(|s| s.machine.awaiting_ack()) {
            self.watch_ack(st, id);
        }
        if let Some(reason) = drop_reason
            && st.socket.is_some()
        {
            self.on_closed(st, &reason, calls);
        }
    }

    /// Gives up the connection when subscription `id` is still waiting for its ack after the
    /// timeout (a subscribe the server never answered).
    fn watch_ack(&self, st: &mut State, id: &str) {
        let (generation, timeout, id) = (st.generation, st.ack_timeout, id.to_owned());
        self.after(st, timeout, move |conn| {
            let mut calls = Calls::default();
            {
                let mut st = conn.0.borrow_mut();
                let waiting = st.sub_mut(&id).is_some_and(|s| s.machine.awaiting_ack());
                if st.generation == generation && st.socket.is_some() && waiting {
                    let reason = format!("no subscription_ack for '{id}' within {} ms", timeout.as_millis());
                    conn.on_closed(&mut st, &reason, &mut calls);
                }
            }
            calls.run();
        });
    }
}
