package com.example.payment;

import org.springframework.boot.context.properties.ConfigurationProperties;

/**
 * Settings under {@code payment.*}. A JavaBean with setters, not a record: Spring Cloud rebinds
 * mutable {@code @ConfigurationProperties} beans after {@code /actuator/refresh}, and cannot
 * rebind one built through its constructor.
 */
@ConfigurationProperties(prefix = "payment")
public class PaymentProperties {

    /** Key of the payment provider's API, from the agent's file {@code api-key}. */
    private String apiKey;

    public String getApiKey() {
        return apiKey;
    }

    public void setApiKey(String apiKey) {
        this.apiKey = apiKey;
    }
}
