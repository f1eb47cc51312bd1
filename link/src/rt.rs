//! The little the library needs from a runtime: a timer. tokio's natively, the JavaScript
//! host's `setTimeout` on wasm32 (browsers and Node alike).

use std::time::Duration;

#[cfg(not(target_arch = "wasm32"))]
pub async fn sleep(d: Duration) {
    tokio::time::sleep(d).await;
}

#[cfg(target_arch = "wasm32")]
pub async fn sleep(d: Duration) {
    use wasm_bindgen::{JsCast, JsValue};
    let ms = d.as_millis().min(i32::MAX as u128) as i32;
    let promise = js_sys::Promise::new(&mut |resolve, _reject| {
        let global = js_sys::global();
        let set_timeout = js_sys::Reflect::get(&global, &JsValue::from_str("setTimeout"))
            .ok()
            .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
        match set_timeout {
            Some(f) => {
                let _ = f.call2(&global, &resolve, &JsValue::from(ms));
            }
            // A host without timers: do not wait rather than never resume.
            None => {
                let _ = resolve.call0(&JsValue::NULL);
            }
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
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
