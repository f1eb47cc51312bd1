//! The little the library needs from a runtime: a timer. tokio's natively, the JavaScript
//! host's `setTimeout` on wasm32 (browsers and Node alike).

use std::time::Duration;

#[cfg(not(target_arch = "wasm32"))]
pub async fn sleep(d: Duration) {
    tokio::time::sleep(d).await;
}

#[cfg(target_arch = "wasm32")]
pub async fn sleep(d: Duration) {
    Timer::new(d).await
}

/// A `setTimeout` as a future; dropping it clears the timeout, so a cancelled wait does not
/// keep a Node.js process alive.
#[cfg(target_arch = "wasm32")]
struct Timer {
    handle: wasm_bindgen::JsValue,
    done: wasm_bindgen_futures::JsFuture,
}

#[cfg(target_arch = "wasm32")]
impl Timer {
    fn new(d: Duration) -> Self {
        use wasm_bindgen::{JsCast, JsValue};
        let ms = d.as_millis().min(i32::MAX as u128) as i32;
        let mut handle = JsValue::UNDEFINED;
        let promise = js_sys::Promise::new(&mut |resolve, _reject| {
            let global = js_sys::global();
            let set_timeout = js_sys::Reflect::get(&global, &JsValue::from_str("setTimeout"))
                .ok()
                .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
            match set_timeout {
                Some(f) => handle = f.call2(&global, &resolve, &JsValue::from(ms)).unwrap_or(JsValue::UNDEFINED),
                // A host without timers: do not wait rather than never resume.
                None => {
                    let _ = resolve.call0(&JsValue::NULL);
                }
            }
        });
        Timer { handle, done: wasm_bindgen_futures::JsFuture::from(promise) }
    }
}

#[cfg(target_arch = "wasm32")]
impl std::future::Future for Timer {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        std::pin::Pin::new(&mut self.done).poll(cx).map(|_| ())
    }
}

#[cfg(target_arch = "wasm32")]
impl Drop for Timer {
    fn drop(&mut self) {
        use wasm_bindgen::{JsCast, JsValue};
        let global = js_sys::global();
        if let Some(clear) = js_sys::Reflect::get(&global, &JsValue::from_str("clearTimeout"))
            .ok()
            .and_then(|f| f.dyn_into::<js_sys::Function>().ok())
        {
            let _ = clear.call1(&global, &self.handle);
        }
    }
}

/// `f`'s output, or `None` when `d` passes first (`f` is dropped, which aborts a fetch).
#[cfg(target_arch = "wasm32")]
pub async fn timeout<F: std::future::Future>(d: Duration, f: F) -> Option<F::Output> {
    use futures::future::{Either, select};
    let (f, sleep) = (std::pin::pin!(f), std::pin::pin!(sleep(d)));
    match select(f, sleep).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(_) => None,
    }
}
