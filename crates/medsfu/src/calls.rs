//! Vehicles open calls through the control API: the QUIC endpoint's [`CallDesk`].

use std::sync::Arc;

use medsfu_api::Control;
use medsfu_quic::server::{CallAnswer, CallDesk};

/// The control API as the vehicle endpoint sees it; with `open_rooms`, vehicles may also
/// publish into rooms the control API does not know.
pub struct VehicleCalls {
    /// The control API.
    pub control: Arc<Control>,
    /// Whether rooms unknown to the control API are open to vehicles.
    pub open_rooms: bool,
}

impl CallDesk for VehicleCalls {
    fn open_call<'a>(&'a self, vehicle: &'a str) -> CallAnswer<'a, String> {
        Box::pin(async move {
            self.control
                .open_vehicle_call(vehicle)
                .await
                .map_err(|e| (e.code().to_owned(), e.to_string()))
        })
    }

    fn may_publish<'a>(&'a self, vehicle: &'a str, room: &'a str) -> CallAnswer<'a, ()> {
        Box::pin(async move {
            self.control
                .vehicle_may_publish(vehicle, room, self.open_rooms)
                .await
                .map_err(|e| (e.code().to_owned(), e.to_string()))
        })
    }
}
