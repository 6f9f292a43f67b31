//! WeChat's encrypted user data: AES-128-CBC with PKCS#7 padding, key = base64(session_key),
//! iv and ciphertext base64 from the client. Every client-supplied length and encoding is
//! checked before use; nothing here panics. Depends on nothing else in the crate.

use aes::cipher::{block_padding::Pkcs7, BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

type Decryptor = cbc::Decryptor<aes::Aes128>;
type Encryptor = cbc::Encryptor<aes::Aes128>;

/// Why encrypted data could not be read. All but `BadSessionKey` are the client's doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecryptError {
    /// `encryptedData` is not base64.
    EncryptedDataNotBase64,
    /// `iv` is not base64.
    IvNotBase64,
    /// `iv` is not 16 bytes.
    IvLength,
    /// The ciphertext is empty or not a whole number of 16-byte blocks.
    CiphertextLength,
    /// Padding check failed: wrong key (the session_key rotated) or tampered data.
    BadPadding,
    /// The plaintext is not a JSON object.
    NotJson,
    /// `watermark.appid` is missing or is another app's.
    Watermark,
    /// The stored session_key is not base64 of 16 bytes (a server-side problem).
    BadSessionKey,
}

fn key_bytes(session_key: &str) -> Result<[u8; 16], DecryptError> {
    STANDARD
        .decode(session_key)
        .ok()
        .and_then(|k| <[u8; 16]>::try_from(k.as_slice()).ok())
        .ok_or(DecryptError::BadSessionKey)
}

/// Decrypt to raw bytes.
pub fn decrypt(session_key: &str, encrypted_data: &str, iv: &str) -> Result<Vec<u8>, DecryptError> {
    let key = key_bytes(session_key)?;
    let iv = STANDARD
        .decode(iv.trim())
        .map_err(|_| DecryptError::IvNotBase64)?;
    let iv = <[u8; 16]>::try_from(iv.as_slice()).map_err(|_| DecryptError::IvLength)?;
    let ciphertext = STANDARD
        .decode(encrypted_data.trim())
        .map_err(|_| DecryptError::EncryptedDataNotBase64)?;
    if ciphertext.is_empty() || ciphertext.len() % 16 != 0 {
        return Err(DecryptError::CiphertextLength);
    }
    Decryptor::new(&key.into(), &iv.into())
        .decrypt_padded_vec::<Pkcs7>(&ciphertext)
        .map_err(|_| DecryptError::BadPadding)
}

/// Decrypt user data and check that it was made for `appid` (its `watermark.appid`).
pub fn decrypt_user_data(
    session_key: &str,
    encrypted_data: &str,
    iv: &str,
    appid: &str,
) -> Result<serde_json::Value, DecryptError> {
    let plain = decrypt(session_key, encrypted_data, iv)?;
    let value: serde_json::Value =
        serde_json::from_slice(&plain).map_err(|_| DecryptError::NotJson)?;
    if !value.is_object() {
        return Err(DecryptError::NotJson);
    }
    match value.pointer("/watermark/appid").and_then(|a| a.as_str()) {
        Some(a) if a == appid => Ok(value),
        _ => Err(DecryptError::Watermark),
    }
}

/// Encrypt as WeChat does (used by the stand-in WeChat to play the client's part).
/// Returns base64 ciphertext and base64 iv.
pub fn encrypt(
    session_key: &str,
    plaintext: &[u8],
    iv: [u8; 16],
) -> Result<(String, String), DecryptError> {
    let key = key_bytes(session_key)?;
    let ciphertext = Encryptor::new(&key.into(), &iv.into()).encrypt_padded_vec::<Pkcs7>(plaintext);
    Ok((STANDARD.encode(ciphertext), STANDARD.encode(iv)))
}

#[cfg(test)]
mod tests {
    use super::*;

    // WeChat's published sample (../shared/wechat-api.md).
    const APPID: &str = "wx4f4bc4dec97d474b";
    const SESSION_KEY: &str = "tiihtNczf5v6AKRyjwEUhQ==";
    const IV: &str = "r7BXXKkLb8qrSNn05n0qiA==";
    const ENCRYPTED: &str = "CiyLU1Aw2KjvrjMdj8YKliAjtP4gsMZMQmRzooG2xrDcvSnxIMXFufNstNGTyaGS9uT5geRa0W4oTOb1WT7fJlAC+oNPdbB+3hVbJSRgv+4lGOETKUQz6OYStslQ142dNCuabNPGBzlooOmB231qMM85d2/fV6ChevvXvQP8Hkue1poOFtnEtpyxVLW1zAo6/1Xx1COxFvrc2d7UL/lmHInNlxuacJXwu0fjpXfz/YqYzBIBzD6WUfTIF9GRHpOn/Hz7saL8xz+W//FRAUid1OksQaQx4CMs8LOddcQhULW4ucetDf96JcR3g0gfRK4PC7E/r7Z6xNrXd2UIeorGj5Ef7b1pJAYB6Y5anaHqZ9J6nKEBvB4DnNLIVWSgARns/8wR2SiRS7MNACwTyrGvt9ts8p12PKFdlqYTopNHR1Vf7XjfhQlVsAJdNiKdYmYVoKlaRv85IfVunYzO0IKXsyl7JCUjCpoG20f0a04COwfneQAGGwd5oa+T8yO5hzuyDb/XcxxmK01EpqOyuxINew==";
    const PLAINTEXT: &str = r#"{"openId":"oGZUI0egBJY1zhBYw2KhdUfwVJJE","nickName":"Band","gender":1,"language":"zh_CN","city":"Guangzhou","province":"Guangdong","country":"CN","avatarUrl":"http://wx.qlogo.cn/mmopen/vi_32/aSKcBBPpibyKNicHNTMM0qJVh8Kjgiak2AHWr8MHM4WgMEm7GFhsf8OYrySdbvAMvTsw3mo8ibKicsnfN5pRjl1p8HQ/0","unionId":"ocMvos6NjeKLIBqg5Mr9QjxrP1FA","watermark":{"timestamp":1477314187,"appid":"wx4f4bc4dec97d474b"}}"#;

    #[test]
    fn decrypts_wechats_published_sample() {
        let plain = decrypt(SESSION_KEY, ENCRYPTED, IV).unwrap();
        assert_eq!(std::str::from_utf8(&plain).unwrap(), PLAINTEXT);
        let value = decrypt_user_data(SESSION_KEY, ENCRYPTED, IV, APPID).unwrap();
        assert_eq!(value["openId"], "oGZUI0egBJY1zhBYw2KhdUfwVJJE");
        assert_eq!(value["watermark"]["timestamp"], 1477314187);
    }

    #[test]
    fn round_trip() {
        let (ct, iv) = encrypt(SESSION_KEY, PLAINTEXT.as_bytes(), [7u8; 16]).unwrap();
        assert_eq!(
            decrypt(SESSION_KEY, &ct, &iv).unwrap(),
            PLAINTEXT.as_bytes()
        );
    }

    #[test]
    fn every_failure_is_an_error_not_a_panic() {
        use DecryptError::*;
        let d = |k: &str, e: &str, i: &str| decrypt_user_data(k, e, i, APPID);
        assert_eq!(d(SESSION_KEY, ENCRYPTED, "AAAA"), Err(IvLength));
        assert_eq!(d(SESSION_KEY, ENCRYPTED, ""), Err(IvLength));
        assert_eq!(
            d(SESSION_KEY, ENCRYPTED, &STANDARD.encode([0u8; 32])),
            Err(IvLength)
        );
        assert_eq!(d(SESSION_KEY, ENCRYPTED, "not base64!"), Err(IvNotBase64));
        assert_eq!(
            d(SESSION_KEY, "not base64!", IV),
            Err(EncryptedDataNotBase64)
        );
        assert_eq!(d(SESSION_KEY, "", IV), Err(CiphertextLength));
        assert_eq!(
            d(SESSION_KEY, &STANDARD.encode([1u8; 17]), IV),
            Err(CiphertextLength)
        );
        // Another key: the padding check fails (or, rarely, the result is not JSON).
        let other = STANDARD.encode([9u8; 16]);
        assert!(matches!(
            d(&other, ENCRYPTED, IV),
            Err(BadPadding) | Err(NotJson)
        ));
        assert_eq!(d("short", ENCRYPTED, IV), Err(BadSessionKey));
        // A foreign watermark, no watermark, not an object.
        assert_eq!(
            decrypt_user_data(SESSION_KEY, ENCRYPTED, IV, "wxsomeoneelse"),
            Err(Watermark)
        );
        let (ct, iv) = encrypt(SESSION_KEY, br#"{"a":1}"#, [1u8; 16]).unwrap();
        assert_eq!(d(SESSION_KEY, &ct, &iv), Err(Watermark));
        let (ct, iv) = encrypt(SESSION_KEY, b"[1,2]", [1u8; 16]).unwrap();
        assert_eq!(d(SESSION_KEY, &ct, &iv), Err(NotJson));
        let (ct, iv) = encrypt(SESSION_KEY, b"\xff\xfe", [1u8; 16]).unwrap();
        assert_eq!(d(SESSION_KEY, &ct, &iv), Err(NotJson));
    }
}
