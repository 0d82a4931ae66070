package com.example.payment;

import com.zaxxer.hikari.HikariConfigMXBean;
import com.zaxxer.hikari.HikariDataSource;
import com.zaxxer.hikari.HikariPoolMXBean;
import java.util.Set;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.cloud.context.environment.EnvironmentChangeEvent;
import org.springframework.context.ApplicationListener;
import org.springframework.core.env.Environment;
import org.springframework.stereotype.Component;

/**
 * Hands new database credentials to the running HikariCP pool after a refresh.
 *
 * <p>Spring Cloud never rebinds the pool on refresh ({@code spring.cloud.refresh.never-refreshable}
 * lists {@code HikariDataSource}), so without this the pool would keep opening connections with
 * the old password until the old credentials are revoked. HikariCP 5 reads the username and
 * password from its configuration for every new connection, so setting them and evicting the
 * idle connections moves the pool to the new credentials. Connections in use finish their work
 * and are closed when returned.
 */
@Component
public class DatabaseCredentialsRotation implements ApplicationListener<EnvironmentChangeEvent> {

    private static final Logger LOG = LoggerFactory.getLogger(DatabaseCredentialsRotation.class);

    // Names of the files (config tree properties) the agent writes, and the properties that
    // refer to them. A refresh reports the changed file names.
    private static final Set<String> CREDENTIAL_KEYS = Set.of(
            "db-username", "db-password", "spring.datasource.username", "spring.datasource.password");

    private final HikariDataSource dataSource;
    private final Environment environment;

    public DatabaseCredentialsRotation(HikariDataSource dataSource, Environment environment) {
        this.dataSource = dataSource;
        this.environment = environment;
    }

    @Override
    public void onApplicationEvent(EnvironmentChangeEvent event) {
        if (event.getKeys().stream().noneMatch(CREDENTIAL_KEYS::contains)) {
            return;
        }

        HikariConfigMXBean config = dataSource.getHikariConfigMXBean();
        config.setUsername(environment.getRequiredProperty("spring.datasource.username"));
        config.setPassword(environment.getRequiredProperty("spring.datasource.password"));

        HikariPoolMXBean pool = dataSource.getHikariPoolMXBean();
        if (pool != null) {
            pool.softEvictConnections();
        }
        LOG.info("database credentials changed; idle connections evicted, new ones use the new credentials");
    }
}
