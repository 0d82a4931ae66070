package com.example.payment;

import java.util.Map;
import org.springframework.web.bind.annotation.GetMapping;
import org.springframework.web.bind.annotation.RestController;

/** Reports whether the secrets are loaded, never their values. */
@RestController
public class StatusController {

    private final PaymentProperties properties;

    public StatusController(PaymentProperties properties) {
        this.properties = properties;
    }

    @GetMapping("/status")
    public Map<String, Object> status() {
        String apiKey = properties.getApiKey();
        return Map.of("apiKeyLoaded", apiKey != null && !apiKey.isEmpty());
    }
}
