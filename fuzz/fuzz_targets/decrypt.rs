//! Encrypted user data: any encryptedData and iv a client sends give data or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxgate::wechat::crypto;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (encrypted, iv) = text.split_once('\n').unwrap_or((&text, ""));
    let _ = crypto::decrypt_user_data(
        "tiihtNczf5v6AKRyjwEUhQ==",
        encrypted,
        iv,
        "wx4f4bc4dec97d474b",
    );
    // And raw bytes as ciphertext with a fixed iv.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let _ = crypto::decrypt_user_data(
        "tiihtNczf5v6AKRyjwEUhQ==",
        &b64,
        "r7BXXKkLb8qrSNn05n0qiA==",
        "wx4f4bc4dec97d474b",
    );
});
