//! Vehicles open calls through the control API: the QUIC endpoint's [`CallDesk`].

use std::sync::Arc;

use medsfu_api::Control;
use medsfu_quic::server::{CallAnswer, CallDesk};

/// The control API as the vehicle endpoint sees it.
pub struct VehicleCalls(pub Arc<Control>);

impl CallDesk for VehicleCalls {
    fn open_call<'a>(&'a self, vehicle: &'a str) -> CallAnswer<'a, String> {
        Box::pin(async move {
            self.0
                .open_vehicle_call(vehicle)
                .await
                .map_err(|e| (e.code().to_owned(), e.to_string()))
        })
    }

    fn may_publish<'a>(&'a self, vehicle: &'a str, room: &'a str) -> CallAnswer<'a, ()> {
        Box::pin(async move {
            self.0
                .vehicle_may_publish(vehicle, room)
                .await
                .map_err(|e| (e.code().to_owned(), e.to_string()))
        })
    }
}
