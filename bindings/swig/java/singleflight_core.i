/* Java half of the shared interface: keys are byte arrays (Group.java encodes
 * strings as UTF-8), values are any Java object, held by a JNI global
 * reference that the library owns and deletes when the last caller is done. */
%module singleflight_core

%{
#include <jni.h>
#include "sfswig.hpp"

/* The VM the global references belong to.  Set before the first reference is
 * made; a process has one JVM. */
static JavaVM *sfjava_vm = nullptr;

/* Runs once per value, on whichever thread drops the last reference: in
 * practice a Java thread inside a native method, but attach if it is not, so
 * a reference is never leaked for want of an env. */
static void sfjava_destroy(void *value) {
    sfswig::live_counter().fetch_sub(1);
    if (!sfjava_vm) return;
    JNIEnv *env = nullptr;
    jint rc = sfjava_vm->GetEnv(reinterpret_cast<void **>(&env), JNI_VERSION_1_6);
    if (rc == JNI_EDETACHED) {
        if (sfjava_vm->AttachCurrentThread(reinterpret_cast<void **>(&env), nullptr) != JNI_OK)
            return;
        env->DeleteGlobalRef(static_cast<jobject>(value));
        sfjava_vm->DetachCurrentThread();
        return;
    }
    if (rc == JNI_OK) env->DeleteGlobalRef(static_cast<jobject>(value));
}
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
        if (!sfjava_vm) jenv_->GetJavaVM(&sfjava_vm);
        if (!obj) {
            $self->set_value(nullptr, nullptr);
            return;
        }
        jobject ref = jenv_->NewGlobalRef(obj);
        if (!ref) throw std::bad_alloc();
        sfswig::live_counter().fetch_add(1);
        $self->set_value(ref, sfjava_destroy);
    }

    /* After a completed wait(): the object the leader stored (the same
     * object for every caller), or null. */
    jobject get_object(JNIEnv *jenv_) {
        jobject ref = static_cast<jobject>($self->value());
        return ref ? jenv_->NewLocalRef(ref) : nullptr;
    }
}

%include "../singleflight.i"
