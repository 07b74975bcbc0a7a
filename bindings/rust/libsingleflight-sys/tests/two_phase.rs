//! Drives the two-phase C API through the raw declarations, to show they link
//! and behave as the header documents: roles, a value passed by pointer,
//! `shared`, a panic message, and destroy running once after the last
//! reference.

use libsingleflight_sys as sys;
use std::ffi::CStr;
use std::os::raw::{c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};

static DESTROYED: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn count_destroy(value: *mut c_void) {
    assert_eq!(*(value as *const u32), 99);
    DESTROYED.fetch_add(1, Ordering::SeqCst);
}

struct GroupPtr(*mut sys::sf_group);
impl Drop for GroupPtr {
    fn drop(&mut self) {
        assert_eq!(unsafe { sys::sf_group_free(self.0) }, sys::SF_OK);
    }
}

fn new_group() -> GroupPtr {
    let mut g = ptr::null_mut();
    assert_eq!(
        unsafe { sys::sf_group_new(&mut g, ptr::null()) },
        sys::SF_OK
    );
    GroupPtr(g)
}

#[test]
fn leader_and_follower_share_a_value_destroyed_once() {
    static VALUE: u32 = 99;
    let g = new_group();
    let key = b"k";
    unsafe {
        let (mut lead, mut follow) = (ptr::null_mut(), ptr::null_mut());
        assert_eq!(
            sys::sf_group_begin(g.0, key.as_ptr() as *const c_void, 1, &mut lead),
            sys::SF_LEADER
        );
        assert_eq!(
            sys::sf_group_begin(g.0, key.as_ptr() as *const c_void, 1, &mut follow),
            sys::SF_FOLLOWER
        );
        assert_eq!(sys::sf_call_role(lead), sys::SF_LEADER);

        let mut r = ptr::null_mut();
        let mut shared: c_int = -1;
        assert_eq!(
            sys::sf_call_wait(follow, 0, &mut r, &mut shared),
            sys::SF_ETIMEDOUT
        );
        assert!(r.is_null());

        sys::sf_call_set_value(
            lead,
            &VALUE as *const u32 as *mut c_void,
            Some(count_destroy),
        );
        assert_eq!(sys::sf_call_finish(lead, 5), sys::SF_OK);
        assert_eq!(
            sys::sf_call_finish(lead, 5),
            sys::SF_ESTATE,
            "finishing twice"
        );

        assert_eq!(
            sys::sf_call_wait(follow, -1, &mut r, &mut shared),
            sys::SF_OK
        );
        assert_eq!(shared, 1);
        assert_eq!(sys::sf_result_value(r) as *const u32, &VALUE as *const u32);
        assert_eq!(sys::sf_result_error(r), 5);
        assert!(sys::sf_result_panic_message(r).is_null());

        let mut lr = ptr::null_mut();
        assert_eq!(sys::sf_call_wait(lead, 0, &mut lr, &mut shared), sys::SF_OK);
        assert_eq!(shared, 1, "the leader had a follower");
        sys::sf_call_release(lead);
        sys::sf_call_release(follow);

        sys::sf_result_release(lr);
        assert_eq!(
            DESTROYED.load(Ordering::SeqCst),
            0,
            "destroyed while referenced"
        );
        sys::sf_result_release(r);
        assert_eq!(DESTROYED.load(Ordering::SeqCst), 1);
    }
}

#[test]
fn a_panicked_flight_keeps_its_message() {
    let g = new_group();
    unsafe {
        let mut call = ptr::null_mut();
        assert_eq!(
            sys::sf_group_begin(g.0, ptr::null(), 0, &mut call),
            sys::SF_LEADER
        );
        assert_eq!(
            sys::sf_call_panic(call, b"it broke\0".as_ptr() as *const _),
            sys::SF_OK
        );
        let mut r = ptr::null_mut();
        assert_eq!(
            sys::sf_call_wait(call, 0, &mut r, ptr::null_mut()),
            sys::SF_EPANIC
        );
        assert_eq!(
            CStr::from_ptr(sys::sf_result_panic_message(r)).to_str(),
            Ok("it broke")
        );
        sys::sf_result_release(r);
        sys::sf_call_release(call);
        let name = CStr::from_ptr(sys::sf_err_name(sys::SF_EPANIC));
        assert_eq!(name.to_str(), Ok("SF_EPANIC"));
    }
}
