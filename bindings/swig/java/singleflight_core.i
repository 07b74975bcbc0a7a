/* Java half of the shared interface: keys are byte arrays (Group.java encodes
 * strings as UTF-8), values are any Java object, held by a JNI global
 * reference that the library owns and deletes when the last caller is done. */
%module singleflight_core

%{
#include <jni.h>
#include "sfswig.hpp"
#include "sfjava_async.hpp"
%}

%rename(NativeGroup) sfswig::Group;
%rename(NativeFlight) sfswig::Flight;
%rename(NativeStats) sfswig::Stats;
/* Object.wait(long) is final in Java. */
%rename(waitFor) sfswig::Flight::wait;

/* byte[] keys; a null array is a NullPointerException, not an empty key. */
%typemap(jni) (const char *key, size_t key_len) "jbyteArray"
%typemap(jtype) (const char *key, size_t key_len) "byte[]"
%typemap(jstype) (const char *key, size_t key_len) "byte[]"
%typemap(javain) (const char *key, size_t key_len) "$javainput"
%typemap(in) (const char *key, size_t key_len) {
    if (!$input) {
        SWIG_JavaThrowException(jenv, SWIG_JavaNullPointerException, "singleflight key is null");
        return $null;
    }
    $1 = (char *)jenv->GetByteArrayElements($input, 0);
    if (!$1) return $null; /* OutOfMemoryError is pending */
    $2 = (size_t)jenv->GetArrayLength($input);
}
%typemap(freearg) (const char *key, size_t key_len) {
    if ($1) jenv->ReleaseByteArrayElements($input, (jbyte *)$1, JNI_ABORT);
}

/* Methods that need the env get it from the wrapper, not from Java. */
%typemap(in, numinputs=0) JNIEnv *jenv_ "$1 = jenv;"

%extend sfswig::Flight {
    /* Leader only: stores obj (may be null) as the flight's value.  The
     * library owns a global reference to it until the last caller is done. */
    void set_object(JNIEnv *jenv_, jobject obj) {
        sfjava::remember_vm(jenv_);
        if (!obj) {
            $self->set_value(nullptr, nullptr);
            return;
        }
        jobject ref = jenv_->NewGlobalRef(obj);
        if (!ref) throw std::bad_alloc();
        sfswig::live_counter().fetch_add(1);
        $self->set_value(ref, sfjava::destroy_value);
    }

    /* After a completed wait(): the object the leader stored (the same
     * object for every caller), or null. */
    jobject get_object(JNIEnv *jenv_) {
        jobject ref = static_cast<jobject>($self->value());
        return ref ? jenv_->NewLocalRef(ref) : nullptr;
    }
}

%include "../singleflight.i"

/* callAsync (sfjava_async.hpp).  Its keys are copied into a buffer on the
 * stack instead of pinning the array: one JNI call, no allocation for keys
 * up to 256 bytes. */
%typemap(jni) (const char *akey, size_t akey_len) "jbyteArray"
%typemap(jtype) (const char *akey, size_t akey_len) "byte[]"
%typemap(jstype) (const char *akey, size_t akey_len) "byte[]"
%typemap(javain) (const char *akey, size_t akey_len) "$javainput"
%typemap(in) (const char *akey, size_t akey_len) (char kbuf_[256], std::string kheap_) {
    if (!$input) {
        SWIG_JavaThrowException(jenv, SWIG_JavaNullPointerException, "singleflight key is null");
        return $null;
    }
    $2 = (size_t)jenv->GetArrayLength($input);
    if ($2 <= sizeof kbuf_) {
        $1 = kbuf_;
    } else {
        try {
            kheap_.resize($2);
        } catch (...) {
            SWIG_JavaThrowException(jenv, SWIG_JavaOutOfMemoryError, "singleflight: out of memory");
            return $null;
        }
        $1 = &kheap_[0];
    }
    jenv->GetByteArrayRegion($input, 0, (jsize)$2, (jbyte *)$1);
}
%include "sfjava_async.hpp"
